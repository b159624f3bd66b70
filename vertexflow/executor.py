"""The executor interface, and SequentialExecutor: a compiled tape run on one thread.

Every executor takes feeds (a mapping of input vertices or names to arrays)
and fetches (vertices or names), checks the feeds before any vertex runs, and
returns arrays: a list for a list of fetches, one array for one fetch.
`backward` runs the forward pass and then the reverse sweep of
`autodiff.reverse` on arrays, returning the loss and {vertex: gradient}.

The sequential executor compiles a *tape* per set of fetches (cached): the
vertices the fetches need, in topological order, each reading its inputs from
slots and writing its output to a slot, with each slot freed right after its
last reader.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .autodiff.namespace import ArrayMath
from .autodiff.reverse import ReversePlan, plan_reverse, sweep
from .core import Failure, VertexRunner, backward_vertex, gradient_result, last_reads, seed_gradient, timeout_error
from .errors import FeedError, GraphError
from .gpu.backend import get_backend
from .graph import Graph, Node, ancestors, format_shape
from .trace.tracer import active_tracer

Fetch = Node | str
Feeds = Mapping[Any, Any] | None


class Executor(abc.ABC):
    """What every executor shares: the graph, the backend, feed checks and result shapes.

    Args:
        graph: the graph to run.
        device: "cpu" (numpy) or "cuda" (cupy).
        tracer: a `vf.trace.Tracer` recording one span per vertex, or None.
        check_numerics: raise VertexError as soon as a vertex produces a NaN.
    """

    def __init__(self, graph: Graph, *, device: str = "cpu", tracer=None, check_numerics: bool = False):
        if not isinstance(graph, Graph):
            raise GraphError(f"an executor runs a vf.Graph, got {type(graph).__name__}")
        self.graph = graph
        self.backend = get_backend(device)
        self.xp = self.backend.xp
        self.tracer = tracer
        self.check_numerics = check_numerics
        self.runner = VertexRunner(self.xp, check_numerics=check_numerics)
        self._reverse_plans: dict[tuple, ReversePlan] = {}
        self._on_device: dict[int, tuple] = {}  # param id -> (host array, device array)
        self._step_counter = 0

    # -- fetches and feeds ---------------------------------------------------
    def _fetches(self, fetch: Fetch | Sequence[Fetch]) -> tuple[list[Node], bool]:
        single = isinstance(fetch, (Node, str))
        items = [fetch] if single else list(fetch)
        if not items:
            raise GraphError("nothing to fetch: give a vertex or a list of vertices")
        return [self.graph.resolve(f) for f in items], single

    def _feeds(self, feeds: Feeds, needed: Iterable[Node]) -> dict[int, Any]:
        """Check feeds against the inputs' specs; {input id: device array}.

        Raises:
            FeedError: a feed names an unknown vertex, a vertex of another graph or a
                non-input; has the wrong shape or dtype; or a needed input is not fed.
        """
        if feeds is None:
            feeds = {}
        if not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must be a mapping of inputs to arrays, got {type(feeds).__name__}")
        checked: dict[int, Any] = {}
        for key, value in feeds.items():
            try:
                node = self.graph.resolve(key)
            except GraphError as exc:
                raise FeedError(f"cannot feed {key!r}: {exc}") from None
            if node.kind != "input":
                raise FeedError(f"cannot feed {node.name!r}: it is a {node.kind}, and only inputs are fed")
            checked[node.id] = self.backend.to_device(self._feed_array(node, value))
        missing = [n.name for n in needed if n.kind == "input" and n.id not in checked]
        if missing:
            raise FeedError(f"missing feeds for {', '.join(map(repr, missing))}, needed by the fetches")
        return checked

    def _feed_array(self, node: Node, value: Any):
        spec = node.spec
        if isinstance(value, np.ndarray) or (self.xp is not np and isinstance(value, self.xp.ndarray)):
            array = value
            if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, "safe"):
                raise FeedError(
                    f"feed for {node.name!r} has dtype {array.dtype}, but the input is {spec.dtype}; "
                    f"convert it with .astype({str(spec.dtype)!r})"
                )
        else:
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise FeedError(f"feed for {node.name!r} is not an array: {exc}") from None
            if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, "same_kind"):
                raise FeedError(f"feed for {node.name!r} has dtype {array.dtype}, but the input is {spec.dtype}")
        if not spec.matches(tuple(array.shape)):
            raise FeedError(
                f"feed for {node.name!r} has shape {format_shape(tuple(array.shape))}, "
                f"but the input is {format_shape(spec.shape)}"
            )
        if array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        if self.check_numerics and spec.dtype.kind == "f" and bool(self.xp.isnan(array).any()):
            raise FeedError(f"feed for {node.name!r} contains NaN")
        return array

    def _tracer(self):
        """The executor's own tracer, else the one of an enclosing `vf.trace()` block."""
        return self.tracer if self.tracer is not None else active_tracer()

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

    def _results(self, values: list, single: bool):
        host = [self.backend.to_host(v) for v in values]
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

    def close(self) -> None:  # noqa: B027 - a no-op by default: a tape holds nothing to release
        """Release what the executor holds (threads, tasks); it can still be used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Instruction:
    index: int
    node: Node
    args: tuple[int, ...]  # slots read
    out: int  # slot written
    free: tuple[int, ...]  # slots no later instruction reads


@dataclass(frozen=True)
class Tape:
    """A compiled program: load sources into slots, run instructions, read fetch slots."""

    loads: tuple[tuple[int, Node], ...]
    instructions: tuple[Instruction, ...]
    fetch_slots: tuple[int, ...]
    slot_of: dict[int, int]

    def listing(self) -> str:
        lines = []
        for slot, node in self.loads:
            lines.append(f"  load  {node.kind:<8} {node.name:<24} -> %{slot:<4} {node.spec}")
        for ins in self.instructions:
            args = ", ".join(f"%{a}" for a in ins.args)
            names = ", ".join(i.name for i in ins.node.inputs)
            lines.append(
                f"{ins.index:>5}  {ins.node.op_name:<16} {args:<16} -> %{ins.out:<4} "
                f"{ins.node.name:<24} {ins.node.spec}   # {names}"
            )
        lines.append("  fetch " + ", ".join(f"%{s}" for s in self.fetch_slots))
        return "\n".join(lines)


def compile_tape(targets: Sequence[Node], keep: Iterable[int] = ()) -> Tape:
    """The tape computing `targets`; slots of vertex ids in `keep` are never freed."""
    order = ancestors(targets)
    slot_of = {n.id: i for i, n in enumerate(order)}
    loads = tuple((slot_of[n.id], n) for n in order if n.kind != "op")
    ops = [n for n in order if n.kind == "op"]
    pinned = {slot_of[t.id] for t in targets} | {slot_of[k] for k in keep if k in slot_of}
    frees = last_reads([[slot_of[i.id] for i in node.inputs] for node in ops], pinned)
    instructions = tuple(
        Instruction(
            index=i,
            node=node,
            args=tuple(slot_of[inp.id] for inp in node.inputs),
            out=slot_of[node.id],
            free=frees[i],
        )
        for i, node in enumerate(ops)
    )
    return Tape(loads, instructions, tuple(slot_of[t.id] for t in targets), slot_of)


class SequentialExecutor(Executor):
    """Runs a graph as a compiled tape, one vertex after another on the calling thread.

    This is the baseline every other executor must match bit for bit.
    """

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        self._tapes: dict[tuple, Tape] = {}

    def tape(self, targets: Sequence[Node], keep: Iterable[int] = ()) -> Tape:
        keep = tuple(sorted(keep))
        key = (tuple(t.id for t in targets), keep)
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = compile_tape(targets, keep)
        return tape

    def program(self, fetch: Fetch | Sequence[Fetch]) -> str:
        """A readable listing of the tape for `fetch`: one line per instruction."""
        nodes, _ = self._fetches(fetch)
        return self.tape(nodes).listing()

    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        nodes, single = self._fetches(fetch)
        tape = self.tape(nodes)
        slots = self._execute(tape, feeds, timeout, self._tracer(), self._next_step())
        return self._results([slots[s] for s in tape.fetch_slots], single)

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        (loss,), _ = self._fetches([loss])
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        plan = self._plan(loss, wrt)
        keep = {n.id for n in plan.order} | {i.id for n in plan.order for i in n.inputs}
        tape = self.tape([loss, *extra], keep)
        tracer, step = self._tracer(), self._next_step()
        slots = self._execute(tape, feeds, timeout, tracer, step)
        grads = reverse_arrays(self, plan, lambda n: slots[tape.slot_of[n.id]], feeds, tracer, step)
        value = self.backend.to_host(slots[tape.fetch_slots[0]])
        if fetch is None:
            return value, grads
        return value, grads, self._results([slots[s] for s in tape.fetch_slots[1:]], single)

    def _execute(self, tape: Tape, feeds: Feeds, timeout: float | None, tracer=None, step: int = 0) -> list:
        checked = self._feeds(feeds, (n for _, n in tape.loads))
        slots: list = [None] * len(tape.slot_of)
        for slot, node in tape.loads:
            if node.kind == "input":
                slots[slot] = checked[node.id]
            else:
                slots[slot] = self._device_value(node)
        deadline = None if timeout is None else time.monotonic() + timeout
        forward = self.runner.forward
        with np.errstate(all="ignore"):
            for ins in tape.instructions:
                if deadline is not None and time.monotonic() > deadline:
                    raise timeout_error(timeout, tape_waiting(tape, ins.index))
                out = forward(ins.node, [slots[a] for a in ins.args], tracer, step)
                if type(out) is Failure:
                    raise out.error
                slots[ins.out] = out
                for s in ins.free:
                    slots[s] = None
        return slots


def tape_waiting(tape: Tape, index: int) -> dict[str, str]:
    """{vertex: what it waits for} for the instructions from `index` on."""
    before = tape.instructions[index - 1].node.name if index else "the loads"
    return {ins.node.name: f"its turn on the tape, after {before}" for ins in tape.instructions[index:]}


def reverse_arrays(
    executor: Executor, plan: ReversePlan, value_of, feeds: Feeds = None, tracer=None, step: int = 0
) -> dict[Node, Any]:
    """The reverse sweep on arrays, each vertex's derivative run by the executor's runner."""
    runner = executor.runner

    def apply_vjp(node: Node, g):
        sent = backward_vertex(runner, plan, node, g, value_of, tracer, step)
        for _, gi in sent:
            if type(gi) is Failure:
                raise gi.error
        return sent

    with np.errstate(all="ignore"):
        totals = sweep(plan, seed_gradient(executor.xp, value_of(plan.output)), apply_vjp, ArrayMath(executor.xp).add)
    return gradient_result(plan, totals, executor.backend.to_host, feeds)


def make_executor(graph: Graph, executor: str | Executor = "sequential", **options) -> Executor:
    """An executor of `graph` from its name ("sequential", "actor", "stream"), or `executor` itself.

    Options go to the executor's constructor (e.g. threads=2 for "actor").

    Raises:
        GraphError: an unknown name, or an executor of another graph.
    """
    if isinstance(executor, Executor):
        if executor.graph is not graph:
            raise GraphError(f"the executor given runs graph {executor.graph.name!r}, not {graph.name!r}")
        return executor
    if executor == "sequential":
        return SequentialExecutor(graph, **options)
    if executor == "actor":
        from .actors import ActorExecutor

        return ActorExecutor(graph, **options)
    if executor == "stream":
        from .streams import StreamExecutor

        return StreamExecutor(graph, **options)
    raise GraphError(f"unknown executor {executor!r}; use 'sequential', 'actor' or 'stream' (or pass an Executor)")
