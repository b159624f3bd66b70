"""The executor interface, and SequentialExecutor: a compiled tape run on one thread.

Every executor takes feeds (a mapping of input vertices or names to arrays)
and fetches (vertices or names), checks the feeds before any vertex runs, and
returns arrays: a list for a list of fetches, one array for one fetch.
`backward` runs the forward pass and then the reverse sweep of
`autodiff.reverse` on arrays, returning the loss and {vertex: gradient}.

The sequential executor runs a *tape* per set of fetches (cached; `tape.py`):
the vertices the fetches need, in topological order, each reading its inputs
from slots and writing its output to a slot, with each slot freed right after
its last reader. For each set of fed shapes it infers every vertex's concrete
spec once (a feed that fits no vertex is refused then), decides from those
which outputs go into reused buffers (`memory.py`), and compiles the tape to
straight-line code (`tape.Program`); calls that watch the step (a tracer,
numerics checks, the first call for those shapes) run each vertex through the
execution core (`core.VertexRunner`) instead. Executors are made by name in
`factory.py`.
"""

from __future__ import annotations

import abc
import math
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .autodiff.namespace import ArrayMath
from .autodiff.reverse import ReversePlan, plan_reverse, sweep
from .core import (
    BACKWARD,
    FORWARD,
    Failure,
    VertexRunner,
    WatchedThread,
    backward_vertex,
    backward_vertex_async,
    check_timeout,
    concrete_specs,
    forward_async,
    gradient_result,
    off_loop,
    run_awaitable,
    seed_gradient,
    timeout_error,
    zero_gradient,
)
from .errors import FeedError, GraphError
from .gpu.backend import get_backend
from .graph import Graph, Node, Spec, ancestors, format_shape
from .memory import BufferPool, owner_ids
from .ops.base import derivative_is_async, is_async
from .rewrites import plan_step
from .tape import Program, Tape, compile_program, compile_tape, fused_instructions, running_site, values_read
from .trace.tracer import active_tracer

Fetch = Node | str
Feeds = Mapping[Any, Any] | None


# Outputs at least this big go into reused buffers: below it malloc's free lists are
# faster than the pool's bookkeeping; above it (glibc's mmap threshold) a fresh array
# costs page faults on every step.
BUFFER_MIN_BYTES = 128 * 1024


class Executor(abc.ABC):
    """What every executor shares: the graph, the backend, feed checks, the memory plan, results.

    Args:
        graph: the graph to run.
        device: "cpu" (numpy) or "cuda" (cupy).
        tracer: a `vf.trace.Tracer` recording one span per vertex, or None.
        check_numerics: raise VertexError as soon as a vertex produces a NaN.
        buffers: write outputs into reused buffers (on the CPU); False allocates every
            output afresh (the values are the same, bit for bit).
        fuse: run groups of elementwise vertices as one compiled pass where that measures
            faster (needs numba; values equal the unfused graph's to rounding, and every
            executor with fuse=True gives the same bits). See vertexflow/fusion.py.
        optimize: apply the rewrites of `rewrites.py` (a product with its bias and activation in
            one pass, ...): they change no value, only the passes a step makes. False runs every
            vertex as it is.
    """

    # Outputs of at least this many bytes go into reused buffers.
    buffer_min_bytes = BUFFER_MIN_BYTES

    def __init__(self, graph: Graph, *, device: str = "cpu", tracer=None, check_numerics: bool = False,
                 buffers: bool = True, fuse: bool = False, optimize: bool = True):
        if not isinstance(graph, Graph):
            raise GraphError(f"an executor runs a vf.Graph, got {type(graph).__name__}")
        self.graph = graph
        self.backend = get_backend(device)
        self.xp = self.backend.xp
        self.tracer = tracer
        self.check_numerics = bool(check_numerics)
        if fuse:
            from . import fusion

            fusion.require()
        self.fuse = bool(fuse)
        self.optimize = bool(optimize)
        self._fusion_cache: dict[tuple, Any] = {}
        # Reused output buffers on the CPU; on a GPU cupy's own pool orders reuse by stream.
        self.buffers = BufferPool(self.xp) if buffers and self.xp is np else None
        self.runner = VertexRunner(self.xp, check_numerics=self.check_numerics, buffers=self.buffers)
        self._reverse_plans: dict[tuple, ReversePlan] = {}
        self._on_device: dict[int, tuple] = {}  # param id -> (host array, device array)
        self._step_counter = 0
        self._spec_cache: dict[tuple, tuple[dict[int, Spec], dict[int, Spec]]] = {}
        self._fetch_cache: dict[Any, tuple[list[Node], bool]] = {}
        self._fitting_shapes: set[tuple[int, tuple]] = set()  # (input id, shape) known to fit

    # -- fetches and feeds ---------------------------------------------------
    def _fetches(self, fetch: Fetch | Sequence[Fetch]) -> tuple[list[Node], bool]:
        """(fetched vertices, whether one was given rather than a list).

        Raises:
            GraphError: nothing, something that is not a vertex or a name, or a vertex of another graph.
        """
        key = fetch if isinstance(fetch, (Node, str)) else tuple(fetch) if isinstance(fetch, (list, tuple)) else None
        try:
            found = self._fetch_cache.get(key)
        except TypeError:  # an unhashable item: let the checks below name it
            found = key = None
        if found is not None:
            return found
        single = isinstance(fetch, (Node, str))
        if single:
            items = [fetch]
        elif isinstance(fetch, (list, tuple)):
            items = list(fetch)
        else:
            raise GraphError(f"fetch must be a vertex, a vertex name, or a list of them; got {type(fetch).__name__}")
        if not items:
            raise GraphError("nothing to fetch: give a vertex or a list of vertices")
        graph = self.graph
        found = [f if type(f) is Node and f.graph is graph else graph.resolve(f) for f in items], single
        if key is not None and len(self._fetch_cache) < 1024:
            self._fetch_cache[key] = found
        return found

    def _feeds(self, feeds: Feeds, needed: Iterable[Node]) -> dict[int, Any]:
        """Check feeds against the inputs' specs; {input id: device array}.

        Raises:
            FeedError: a feed names an unknown vertex, a vertex of another graph or a
                non-input, or one input twice; has the wrong shape or dtype, or values
                its dtype cannot hold; or a needed input is not fed.
        """
        if feeds is None:
            feeds = {}
        elif not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must be a mapping of inputs to arrays, got {type(feeds).__name__}")
        graph = self.graph
        checked: dict[int, Any] = {}
        fitting = self._fitting_shapes
        plain = not self.check_numerics and self.xp is np
        for key, value in feeds.items():
            if type(key) is Node and key.graph is graph and key.kind == "input" and plain and \
                    type(value) is np.ndarray and value.dtype == key.spec.dtype and (key.id, value.shape) in fitting:
                if key.id in checked:
                    raise FeedError(f"input {key.name!r} is fed twice (as a vertex and by its name); feed it once")
                checked[key.id] = value  # an array already seen to fit: nothing more to check
                continue
            if type(key) is Node and key.graph is graph:
                node = key
            else:
                try:
                    node = graph.resolve(key)
                except GraphError as exc:
                    raise FeedError(f"cannot feed {key!r}: {exc}") from None
            if node.kind != "input":
                raise FeedError(f"cannot feed {node.name!r}: it is a {node.kind}, and only inputs are fed")
            if node.id in checked:
                raise FeedError(f"input {node.name!r} is fed twice (as a vertex and by its name); feed it once")
            checked[node.id] = self._feed_array(node, value)
        for node in needed:
            if node.id not in checked and node.kind == "input":
                missing = [n.name for n in needed if n.kind == "input" and n.id not in checked]
                raise FeedError(f"missing feeds for {', '.join(map(repr, missing))}, needed by the fetches")
        return checked

    def _feed_array(self, node: Node, value: Any):
        spec = node.spec
        if type(value) is np.ndarray and value.dtype == spec.dtype:
            array = value  # the common case, checked quickly
        elif isinstance(value, np.ndarray) or (self.xp is not np and isinstance(value, self.xp.ndarray)):
            array = value
            if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, "safe"):
                raise FeedError(
                    f"feed for {node.name!r} has dtype {array.dtype}, but the input is {spec.dtype}; "
                    f"convert it with .astype({str(spec.dtype)!r})"
                )
            array = array.astype(spec.dtype)
        else:
            array = _converted(node, value)
        if (node.id, array.shape) not in self._fitting_shapes:
            if not spec.matches(array.shape):
                raise FeedError(
                    f"feed for {node.name!r} has shape {format_shape(tuple(array.shape))}, "
                    f"but the input is {format_shape(spec.shape)}"
                )
            if len(self._fitting_shapes) < 4096:
                self._fitting_shapes.add((node.id, array.shape))
        if self.check_numerics and spec.dtype.kind == "f" and bool(self.xp.isnan(array).any()):
            raise FeedError(f"feed for {node.name!r} contains NaN")
        return self.backend.to_device(array)

    def _tracer(self):
        """The executor's own tracer, else the one of an enclosing `vf.trace()` block."""
        return self.tracer if self.tracer is not None else active_tracer()

    def trace_options(self) -> dict:
        """What a trace's process track says of this executor (its label and metadata)."""
        return {}

    def _trace(self, tracer, step: int = 0, run: int | None = None):
        """The StepTrace a step records into, or None without a tracer."""
        return None if tracer is None else tracer.step_trace(self, step, run)

    def _next_step(self) -> int:
        step = self._step_counter
        self._step_counter = step + 1
        return step

    def _device_value(self, node: Node):
        """A param's or constant's value on the device, uploaded again only after it is reassigned.

        On the CPU this is the array itself. On a GPU params live on the device
        between runs; an optimizer step assigns a new array, which is uploaded once.
        """
        value = node.value
        if self.xp is np:
            return value
        held = self._on_device.get(node.id)
        if held is None or held[0] is not value:
            held = self._on_device[node.id] = (value, self.backend.to_device(value))
        return held[1]

    # -- the memory plan -------------------------------------------------------
    def _specs(self, key: Any, order: Sequence[Node], checked: Mapping[int, Any]):
        """(concrete specs, specs of the outputs to put in reused buffers) for these fed shapes.

        Inferred once per set of shapes, then cached; the inference checks every
        vertex against the fed shapes before anything runs.

        Raises:
            FeedError: the fed shapes do not fit some vertex.
        """
        signature = (key, *[v.shape for v in checked.values()], *checked)
        found = self._spec_cache.get(signature)
        if found is None:
            specs = concrete_specs(order, checked)
            pooled = {}
            if self.buffers is not None:
                for node in order:
                    spec = specs[node.id]
                    if node.kind == "op" and node.op.writes_out and spec.static and \
                            math.prod(spec.shape) * spec.dtype.itemsize >= self.buffer_min_bytes:
                        pooled[node.id] = spec
            found = self._spec_cache[signature] = (specs, pooled)
        return found

    def _hand_out(self, values: Sequence[Any], nodes: Sequence[Node | None], sources: Iterable[Any] = (),
                  stored: Sequence[Node] | None = None) -> list:
        """Values as the user gets them: on the host, and never the storage of a feed, a param or a
        constant (a fetched input, a reshape or transpose of a param, a gradient that is one): those
        are copied, so writing into a result never changes the caller's arrays or a later run.

        (A value in a pooled buffer stays busy while the user holds it, so needs nothing here.)

        Args:
            nodes: the vertex of each value (None for a gradient, MADE for one the program made).
            sources: the step's feeds (the graph's params and constants are always protected).
            stored: the params and constants to protect besides `sources` (default: all the graph's; a
                tape's call gives those it does not load, the others being among its sources).
        """
        source_ids = None
        to_host = None if self.xp is np else self.backend.to_host
        out = []
        for value, node in zip(values, nodes):
            if to_host is not None:
                value = to_host(value)
            if node is not MADE and isinstance(value, np.ndarray) and (
                    node is None or node.kind != "op" or not (node.op.writes_out or node.op.fresh_output) or
                    node.op.views):
                # A source, a gradient, or an op that may return a view of its input.
                if source_ids is None:
                    stored = self._stored_nodes() if stored is None else stored
                    source_ids = owner_ids([*sources, *(n.value for n in stored)])
                base = value.base
                if id(value if base is None else base) in source_ids:
                    value = np.array(value)
            out.append(value)
        return out

    def _stored_nodes(self, tape: Tape | None = None) -> list[Node]:
        """The graph's params and constants (kept until the graph grows); with `tape`, those it does not load."""
        count = len(self.graph._nodes)
        if getattr(self, "_stored", None) is None or self._stored[0] != count:
            self._stored = (count, [n for n in self.graph.nodes if n.kind in ("param", "const")], {})
        if tape is None:
            return self._stored[1]
        found = self._stored[2].get(id(tape))
        if found is None or found[0] is not tape:  # (a tape let go and its id taken again)
            found = self._stored[2][id(tape)] = (tape, [n for n in self._stored[1] if n.id not in tape.slot_of])
        return found[1]

    def _results(self, values: list, nodes: Sequence[Node], single: bool, sources: Iterable[Any] = (),
                 tape: Tape | None = None):
        host = self._hand_out(values, nodes, sources, None if tape is None else self._stored_nodes(tape))
        return host[0] if single else host

    def _plan(self, loss: Node, wrt) -> ReversePlan:
        """The reverse plan for loss and wrt (default: every float param the loss depends on), cached."""
        if wrt is None:
            key = (loss.id, None)
        else:
            items = [wrt] if isinstance(wrt, (Node, str)) else list(wrt)
            wrt = [self.graph.resolve(w) for w in items]
            key = (loss.id, tuple(w.id for w in wrt))
        plan = self._reverse_plans.get(key)
        if plan is None:
            if wrt is None:
                wrt = [n for n in ancestors([loss]) if n.kind == "param" and n.dtype.kind == "f"]
            plan = self._reverse_plans[key] = plan_reverse(loss, wrt)
        return plan

    # -- the interface ---------------------------------------------------------
    @abc.abstractmethod
    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        """Compute the fetched vertices from the feeds.

        Returns:
            One array for one fetch, else a list in the order of `fetch`.

        Raises:
            FeedError: bad feeds, before any vertex runs.
            VertexError: a vertex failed (original exception chained).
            ExecutionTimeout: the step took longer than `timeout` seconds.
        """

    @abc.abstractmethod
    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        """Forward, then runtime reverse mode from the scalar `loss`.

        Args:
            wrt: vertices to differentiate with respect to; default every param
                the loss depends on.
            fetch: other vertices to return from the same forward pass (e.g. the
                logits, for a batch's accuracy), a vertex or a list.

        Returns:
            (loss value, {vertex: gradient array}), and the fetched values third
            when `fetch` is given.
        """

    def run_stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                   timeout: float | None = None) -> Iterator:
        """Each feeds mapping's fetches, in input order, one step after another (`timeout` per step).

        (The actor executor pipelines its steps: step k+1 enters while step k is still running.)
        """
        timeout = check_timeout(timeout)
        for feeds in feeds_iterable:
            yield self.run(feeds, fetch, timeout=timeout)

    async def stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                     timeout: float | None = None) -> AsyncIterator:
        """`run_stream` inside a trio or asyncio task: each step off the caller's loop."""
        timeout = check_timeout(timeout)
        for feeds in feeds_iterable:
            yield await off_loop(partial(self.run, feeds, fetch, timeout=timeout))

    def close(self) -> None:  # noqa: B027 - a no-op by default: a tape holds nothing to release
        """Release what the executor holds (threads, tasks); it can still be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _converted(node: Node, value: Any) -> np.ndarray:
    """A Python value (list, scalar) as an array of the input's dtype, refusing what the dtype cannot hold."""
    dtype = node.spec.dtype
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FeedError(f"feed for {node.name!r} is not an array: {exc}") from None
    if array.dtype == dtype:
        return array
    if array.dtype == object:
        raise FeedError(f"feed for {node.name!r} is not an array of numbers (its values do not fit one dtype)")
    if not np.can_cast(array.dtype, dtype, "same_kind"):
        raise FeedError(f"feed for {node.name!r} has dtype {array.dtype}, but the input is {dtype}")
    if array.size and dtype.kind in "iu" and array.dtype.kind in "iub":
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise FeedError(f"feed for {node.name!r} holds {high if high > info.max else low}, "
                            f"outside the range of {dtype} [{info.min}, {info.max}]")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values are refused just below
        converted = array.astype(dtype)
    if array.size and dtype.kind == "f" and array.dtype.kind in "fiu":
        if bool(np.isinf(converted).any()) and not bool(np.isinf(array).any()):
            raise FeedError(f"feed for {node.name!r} holds values too large for {dtype} "
                            f"(largest {np.finfo(dtype).max:g})")
    return converted


class SequentialExecutor(Executor):
    """Runs a graph as a compiled tape, one vertex after another on the calling thread.

    This is the baseline every other executor must match bit for bit. Each tape
    is compiled to straight-line code once per set of fed shapes (`tape.py`);
    the first call for a set of shapes, and every call with a tracer or
    `check_numerics`, runs the same instructions one at a time through the
    execution core instead. With `timeout=`, the tape runs on a watched thread
    of its own, so that the call returns at the deadline whatever a vertex does.
    """

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        self._tapes: dict[tuple, Tape] = {}
        self._backward_tapes: dict[tuple, Tape] = {}  # (reverse plan, extra fetches) -> tape
        self._plain_steps: dict[Node | str, _PlainStep] = {}  # backward(feeds, loss)'s, by the loss as given
        # (tape, specs, reverse plan) -> its Program, or None once a checked call has run it
        self._programs: dict[tuple, Program | None] = {}
        self._watched = WatchedThread("vf-tape-watched")
        # Dropped without close(): its watched thread (made by a call with timeout=) stops all the same.
        weakref.finalize(self, self._watched.close)

    def tape(self, targets: Sequence[Node], keep: Iterable[int] = ()) -> Tape:
        keep = tuple(sorted(keep))
        key = (tuple(t.id for t in targets), keep)
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = compile_tape(targets, keep)
        return tape

    def program(self, fetch: Fetch | Sequence[Fetch], feeds: Feeds = None, *, backward: bool = False) -> str:
        """A readable listing of the tape for `fetch`: one line per instruction.

        With `feeds`, the Python code the tape is compiled to for those fed shapes; with
        `backward=True` as well, the code of the training step `backward(feeds, fetch)` runs
        (the forward sweep, then one derivative rule a line).
        """
        nodes, _ = self._fetches(fetch)
        if backward:
            if feeds is None or len(nodes) != 1:
                raise GraphError("program(..., backward=True) takes one loss to fetch and the feeds")
            plan = self._plan(nodes[0], None)
            tape = self._backward_tape(nodes[0], plan, [])
        else:
            plan, tape = None, self.tape(nodes)
        if feeds is None:
            return tape.listing()
        checked = self._feeds(feeds, tape.inputs)
        specs, pooled = self._specs(id(tape), tape.order, checked)
        return self._compiled(tape, specs, pooled, plan).source

    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        start = time.perf_counter()
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        trace = _as_trace(self, self._tracer())
        result = self.run_nodes(feeds, nodes, single, timeout, trace)
        if trace is not None:
            trace.slice(start, time.perf_counter())  # the call, from entry to return
        return result

    def run_nodes(self, feeds: Feeds, nodes: list[Node], single: bool, timeout: float | None, tracer):
        """`run` with the fetches resolved and the tracer given (what other executors call)."""
        tape = self.tape(nodes)
        values, _, sources, _ = self._execute(tape, feeds, timeout, _as_trace(self, tracer))
        return self._results(values, nodes, single, sources, tape)

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        start = time.perf_counter()
        plain = wrt is None and fetch is None and timeout is None and type(loss) in (Node, str)
        if plain:  # a training loop's call: once compiled, its step runs without the general path's layers
            step = self._plain_steps.get(loss)
            if step is not None:
                result = step(feeds)
                if result is not None:
                    return result
        timeout = check_timeout(timeout)
        fetched = loss
        (loss,), _ = self._fetches(loss)
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        tracer = self.tracer if self.tracer is not None else active_tracer()
        trace = None if tracer is None else _as_trace(self, tracer)
        plan = self._plan(loss, wrt)
        result = self.backward_nodes(feeds, loss, plan, extra, single, fetch is not None, timeout, trace)
        if trace is not None:
            trace.slice(start, time.perf_counter())
        if plain and self.xp is np and len(self._plain_steps) < 64:
            self._plain_steps[fetched] = _PlainStep(self, loss, plan, self._backward_tape(loss, plan, []))
        return result

    def backward_nodes(self, feeds: Feeds, loss: Node, plan: ReversePlan, extra: list[Node], single: bool,
                       fetched: bool, timeout: float | None, tracer):
        """`backward` with the fetches and the reverse plan resolved and the tracer given."""
        tape = self._backward_tape(loss, plan, extra)
        values, totals, sources, made = self._execute(tape, feeds, timeout, _as_trace(self, tracer), plan)
        grads = gradient_result(plan, totals, None if self.xp is np else self.backend.to_host, feeds)
        value, *given = self._hand_out([values[0], *grads.values()], [loss, *(MADE if w.id in made else None
                                                                               for w in grads)],
                                       sources, self._stored_nodes(tape))
        grads = dict(zip(grads, given))
        if not fetched:
            return value, grads
        return value, grads, self._results(values[1:], extra, single, sources, tape)

    def _backward_tape(self, loss: Node, plan: ReversePlan, extra: Sequence[Node]) -> Tape:
        """The tape of a training step: the loss and `extra` fetched, every value the sweep is handed kept."""
        key = _backward_key(plan, extra)
        tape = self._backward_tapes.get(key)
        if tape is None:
            keep = {n.id for n in plan.order} | {i.id for n in plan.order for i in n.inputs}
            tape = self._backward_tapes[key] = self.tape([loss, *extra], keep)
        return tape

    # -- running a tape ----------------------------------------------------------------------
    def _execute(self, tape: Tape, feeds: Feeds, timeout: float | None, trace=None,
                 reverse: ReversePlan | None = None):
        """Run the tape (and the reverse sweep); (fetched values, {wrt id: gradient}, the sources loaded,
        the wrt ids whose gradients the compiled sweep made: `Program.made`)."""
        checked = self._feeds(feeds, tape.inputs)
        specs, pooled = self._specs(id(tape), tape.order, checked)
        if self.xp is np:  # a param's or constant's array itself
            sources = tape.stored_sources(checked)
        else:
            sources = [checked[n.id] if n.kind == "input" else self._device_value(n) for _, n in tape.loads]
        key = (id(tape), id(specs), None if reverse is None else id(reverse))
        if trace is None and not self.check_numerics and key in self._programs and not tape.awaits:
            program = self._compiled(tape, specs, pooled, reverse)
            buffers = self.buffers

            def compiled():
                result = program(sources)
                if buffers is not None:
                    buffers.end_step()
                return result

            if timeout is None:  # here, nothing watching it
                result = compiled()
            else:
                result = self._watch(compiled, timeout, tape, reverse, Progress(program=program))
            if reverse is None:
                return list(result), {}, sources, program.made
            values, totals = result
            return list(values), {w.id: t for w, t in zip(reverse.wrt, totals) if t is not None}, sources, \
                program.made
        # A checked call: the same instructions one at a time, each output checked against its spec the
        # first time these shapes run; the next plain call compiles them.
        first = key not in self._programs
        progress = Progress()
        result = self._watch(partial(self._interpret, tape, specs, pooled, sources, trace, reverse, progress, first),
                             timeout, tape, reverse, progress)
        self._programs.setdefault(key, None)
        return (*result, sources, frozenset())

    def prepare(self, feeds: Feeds, nodes: list[Node], reverse: ReversePlan | None = None,
                extra: Sequence[Node] = ()) -> None:
        """Compile now the program a plain call for these fetches and fed shapes will run, if a checked
        call has run them (another executor timing the tape then times the program, not its compiling)."""
        if reverse is None:
            tape = self.tape(nodes)
        else:
            tape = self._backward_tapes.get(_backward_key(reverse, extra))
            if tape is None:
                return
        checked = self._feeds(feeds, tape.inputs)
        specs, pooled = self._specs(id(tape), tape.order, checked)
        key = (id(tape), id(specs), None if reverse is None else id(reverse))
        if key in self._programs and not self.check_numerics and not tape.awaits:
            self._compiled(tape, specs, pooled, reverse)

    def _compiled(self, tape: Tape, specs: dict, pooled: dict, reverse: ReversePlan | None) -> Program:
        key = (id(tape), id(specs), None if reverse is None else id(reverse))
        program = self._programs.get(key)
        if program is None:
            instructions, fused = self._fused(tape, specs, reverse)
            program = self._programs[key] = compile_program(tape, instructions, specs, pooled, fused, self.xp,
                                                            self.buffers, reverse=reverse)
        return program

    def _interpret(self, tape: Tape, specs: dict, pooled: dict, sources: list, trace, reverse, progress: Progress,
                   check: bool):
        """The tape's instructions one at a time through the execution core; (fetched values, totals)."""
        instructions, fused = self._fused(tape, specs)
        slots: list = [None] * len(tape.slot_of)
        for (slot, _), value in zip(tape.loads, sources):
            slots[slot] = value
        forward = self.runner.forward
        get = pooled.get
        fused_op = fused.get
        with np.errstate(all="ignore"):
            for ins in instructions:
                node = ins.node
                progress.at(node, FORWARD)
                if tape.awaits and is_async(node.op):  # awaited in a trio loop, one at a time
                    out = run_awaitable(partial(forward_async, self.runner, node, [slots[a] for a in ins.args],
                                                trace, None, None, specs[node.id] if check else None))
                else:
                    out = forward(node, [slots[a] for a in ins.args], get(node.id), trace, None, None,
                                  fused_op(node.id), specs[node.id] if check else None)
                if type(out) is Failure:
                    raise out.error
                slots[ins.out] = out
                for s in ins.free:
                    slots[s] = None
        if self.buffers is not None:
            self.buffers.end_step()
        values = [slots[s] for s in tape.fetch_slots]
        if reverse is None:
            return values, {}
        return values, reverse_arrays(self, reverse, lambda n: slots[tape.slot_of[n.id]], trace, progress)

    def _watch(self, fn, timeout: float | None, tape: Tape, reverse: ReversePlan | None, progress: Progress):
        """fn() here, or on the watched thread when there is a deadline (ExecutionTimeout after it)."""
        if timeout is None:
            return fn()
        finished, result = self._watched.call(fn, timeout)
        if not finished:
            if progress.program is not None:
                site = running_site(progress.program, self._watched.ident)
                if site is not None:
                    progress.at(site.node, site.phase)
            raise timeout_error(timeout, tape_waiting(tape, reverse, progress))
        return result

    def _fused(self, tape: Tape, specs: dict, reverse: ReversePlan | None = None):
        """The tape's instructions for these specs with rewrites and fused groups as one each (cached).

        With `reverse` (a training step's program), a rewrite's group may hold values the sweep reads the
        shape of only (`values_read`), provided they are shaped as the group's value, which stands for
        them; the elementwise fusion, whose bits are not the unfused vertices', stays out of training steps
        (their first, checked call runs vertex by vertex, as the actors do).
        """
        if not (self.optimize or self.fuse):
            return tape.instructions, {}
        key = (id(tape), id(specs), reverse is not None)
        found = self._fusion_cache.get(key)
        if found is None:
            keep = tape.kept if reverse is None else values_read(tape, reverse)
            plan = plan_step(tape.order, specs, keep, optimize=self.optimize, fuse=self.fuse and reverse is None)
            if reverse is not None:
                plan = plan.only(lambda op: all(specs[m.id] == specs[op.group.root.id] for m in op.group.members))
            found = self._fusion_cache[key] = fused_instructions(tape, plan) if plan.ops else (tape.instructions, {})
        return found

    def close(self) -> None:
        self._watched.close()


class Progress:
    """Where a tape is: the vertex running and whether its op or its derivative (for a timeout's message)."""

    __slots__ = ("node", "phase", "program")

    def __init__(self, program: Program | None = None):
        self.node: Node | None = None
        self.phase = FORWARD
        self.program = program

    def at(self, node: Node, phase: str) -> None:
        self.node, self.phase = node, phase


def tape_waiting(tape: Tape, reverse: ReversePlan | None, progress: Progress) -> dict[str, str]:
    """{vertex: what it waits for} for a tape that has run too long: the one running first, then the rest."""
    running = progress.node
    if running is None:
        return {"(the step)": "the tape to start (the thread is still busy with an earlier call)"}
    ops = [ins.node for ins in tape.instructions]
    backward = [n for n in reverse.order if n.kind == "op"] if reverse is not None else []
    if progress.phase == FORWARD:
        waiting = {running.name: f"running {running.op_name} to return"}
        later = ops[next((k for k, n in enumerate(ops) if n is running), -1) + 1:]
        for node in later:
            waiting[node.name] = f"its turn on the tape, after {running.name}"
        for node in backward:
            waiting.setdefault(node.name, "its derivative, in the backward sweep")
        return waiting
    waiting = {running.name: f"running the derivative of {running.op_name} to return"}
    later = backward[next((k for k, n in enumerate(backward) if n is running), -1) + 1:]
    for node in later:
        waiting[node.name] = f"its derivative, after {running.name}'s"
    return waiting


def reverse_arrays(executor: Executor, plan: ReversePlan, value_of, trace=None,
                   progress: Progress | None = None) -> dict[int, Any]:
    """The reverse sweep on arrays, each vertex's derivative run by the executor's runner; {wrt id: total}."""
    runner = executor.runner

    def apply_vjp(node: Node, g):
        if progress is not None:
            progress.at(node, BACKWARD)
        if derivative_is_async(node.op):
            sent = run_awaitable(partial(backward_vertex_async, runner, plan, node, g, value_of, trace))
        else:
            sent = backward_vertex(runner, plan, node, g, value_of, trace)
        for _, gi in sent:
            if type(gi) is Failure:
                raise gi.error
        return sent

    with np.errstate(all="ignore"):
        return sweep(plan, seed_gradient(executor.xp, value_of(plan.output)), apply_vjp, ArrayMath(executor.xp).add)


class _PlainStep:
    """`backward(feeds, loss)` on the CPU once its program is compiled: the feeds checked, the program run,
    the gradients handed out, without the general path's layers (a training loop calls it every step;
    they cost 25-35 us a call on an MLP's step). Returns None where the general path must run: a trace or
    numerics checking on, fed shapes not compiled yet, a vertex that awaits."""

    __slots__ = ("executor", "loss", "plan", "tape", "unmade")

    def __init__(self, executor: SequentialExecutor, loss: Node, plan: ReversePlan, tape: Tape):
        self.executor, self.loss, self.plan, self.tape = executor, loss, plan, tape
        self.unmade: dict[int, list[Node]] = {}  # program id -> the wrt vertices whose gradients it did not make

    def __call__(self, feeds: Feeds):
        ex, tape, plan = self.executor, self.tape, self.plan
        if ex.tracer is not None or ex.check_numerics or tape.awaits or active_tracer() is not None:
            return None
        checked = ex._feeds(feeds, tape.inputs)
        specs, pooled = ex._specs(id(tape), tape.order, checked)
        if (id(tape), id(specs), id(plan)) not in ex._programs:
            return None
        program = ex._compiled(tape, specs, pooled, plan)
        sources = tape.stored_sources(checked)
        values, totals = program(sources)
        if ex.buffers is not None:
            ex.buffers.end_step()
        grads = dict(zip(plan.wrt, totals))
        unmade = self.unmade.get(id(program))
        if unmade is None:
            unmade = self.unmade[id(program)] = [w for w in plan.wrt if w.id not in program.made]
        for w, total in grads.items():
            if total is None:
                grads[w] = zero_gradient(w, plan.output.name, feeds)
        value, *given = ex._hand_out([values[0], *(grads[w] for w in unmade)], [self.loss, *([None] * len(unmade))],
                                     sources, ex._stored_nodes(tape))
        grads.update(zip(unmade, given))
        return value, grads


# A value's place in `_hand_out`'s nodes for a gradient the compiled sweep made (`Program.made`).
MADE = "made by the step"


def _backward_key(plan: ReversePlan, extra: Sequence[Node]):
    """The key of a training step's tape: its reverse plan and the extra values it fetches."""
    return (id(plan), *(n.id for n in extra)) if extra else id(plan)


def _as_trace(executor: Executor, tracer):
    """A tracer becomes this executor's StepTrace; a StepTrace (another executor's, lent) stays itself."""
    if tracer is None:
        return None
    if hasattr(tracer, "step_trace"):
        return tracer.step_trace(executor)
    return tracer
