"""The execution core: how one vertex, and one vertex's derivative, runs, for every executor.

The tape, the actors, the stream executor and the Ray partitions differ in
*when* and *where* a vertex runs; *how* it runs is written once, here, as
dask's `get_sync` is its `get_async` handed a synchronous executor:

    value = runner.forward(node, args, ...)              # its value, or a Failure
    grads = runner.derivative(node, needs, g, xs, y, ...) # a gradient per input, or a Failure

`VertexRunner.forward` passes a failed input on as the vertex's own failure,
takes a reused output buffer where the plan gives one, takes the BLAS lock
for a BLAS-calling op when the executor gives one, calls the op, wraps an
exception as `VertexError` (the original chained; a `KeyboardInterrupt` or
other BaseException is kept as itself), checks for NaNs when numerics
checking is on, and records an honest span when a tracer listens: a wait for
the lock is an event of its own, never part of the vertex's work.
`derivative` does the same for the op's derivative rule and checks that the
rule returned one gradient of the right shape per input that needs one.

Around them sit the other pieces every executor shares: `total_gradient`
(edge gradients summed in the plan's fixed order by reverse mode's
`sum_edges`, or the failure among them), `last_reads` (when a value can be
let go), `backward_vertex` (one vertex's step of the reverse sweep),
`gradient_result` (the {vertex: gradient} a backward call returns) and
`timeout_error`.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import trio

from .autodiff.namespace import ArrayMath
from .autodiff.reverse import check_rule_results, sum_edges
from .errors import ExecutionTimeout, FeedError, GraphError, ShapeError, VertexError, VertexflowError
from .graph import Node, Spec, format_shape
from .memory import BufferPool
from .ops.base import Op

FORWARD, BACKWARD = "forward", "backward"


class Failure:
    """Stands in for the value of a vertex that failed (or that read a failed value).

    Executors that carry values between tasks (the actors) let a Failure flow
    on like a value so every task stays in step; the tape raises it at once.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"


def vertex_error(node: Node, args: Sequence[Any], exc: BaseException, phase: str) -> VertexError:
    """A VertexError naming the vertex, its op, its input shapes and where it was built."""
    shapes = tuple(tuple(getattr(a, "shape", ())) for a in args)
    shown = ", ".join(format_shape(s) for s in shapes) or "no inputs"
    error = VertexError(
        f"vertex {node.name!r} ({node.op_name}, built at {node.origin}) failed in {phase} "
        f"on inputs of shapes {shown}: {type(exc).__name__}: {exc}",
        vertex=node.name,
        op=node.op_name,
        input_shapes=shapes,
    )
    error.__cause__ = exc
    return error


def nan_error(node: Node, args: Sequence[Any], phase: str, what: str = "output") -> VertexError:
    return vertex_error(node, args, FloatingPointError(f"NaN in the {what}"), phase)


def _failed(node: Node, args: Sequence[Any], exc: BaseException, phase: str) -> Failure:
    if isinstance(exc, VertexflowError):
        return Failure(exc)
    if not isinstance(exc, Exception):
        # KeyboardInterrupt, SystemExit and friends reach the caller as themselves.
        return Failure(exc)
    return Failure(vertex_error(node, args, exc, phase))


def _has_nan(xp, array) -> bool:
    return array.dtype.kind == "f" and bool(xp.isnan(array).any())


def thread_lane() -> str:
    """The lane a span on this thread belongs to: a worker's name, else "main" or the trio thread."""
    name = threading.current_thread().name
    return name if name.startswith("vf-") else "main"


class VertexRunner:
    """Runs vertices and their derivative rules for one executor.

    Args:
        xp: the array module (numpy or cupy).
        check_numerics: a NaN in a value or a gradient fails the vertex that made it.
        blas_lock: held around every BLAS-calling op (`op.blas`) this runner runs, so
            that BLAS calls on parallel threads take turns, each with all of BLAS's threads.
    """

    __slots__ = ("xp", "check_numerics", "blas_lock", "buffers")

    def __init__(self, xp, *, check_numerics: bool = False, blas_lock: threading.Lock | None = None,
                 buffers: BufferPool | None = None):
        self.xp = xp
        self.check_numerics = check_numerics
        self.blas_lock = blas_lock
        self.buffers = buffers

    def with_blas_lock(self, lock: threading.Lock | None) -> VertexRunner:
        """The same runner, holding `lock` around BLAS calls."""
        return VertexRunner(self.xp, check_numerics=self.check_numerics, blas_lock=lock, buffers=self.buffers)

    def _traced(self, node: Node, op: Op, fn, args: tuple, out, trace, lane: str, ready: float, phase: str,
                shown) -> Any:
        """fn(*args) with an honest span: any BLAS-lock wait recorded apart, then the work, with CPU time."""
        lock = self.blas_lock if op.blas else None
        if lock is not None:
            asked = time.perf_counter()
            lock.acquire()
            acquired = time.perf_counter()
            if acquired - asked > 2e-6:
                trace.wait("BLAS lock", node.name, lane, asked, acquired)
        else:
            acquired = time.perf_counter()
        try:
            # The CPU clock is read inside the wall clock's window, so a span's CPU time never exceeds it.
            start = time.perf_counter()
            cpu = time.thread_time()
            result = fn(*args) if out is None else fn(*args, out=out)
            cpu = time.thread_time() - cpu
            end = time.perf_counter()
        finally:
            if lock is not None:
                lock.release()
        trace.record(node, phase, lane, min(ready, acquired), acquired, start, end, min(cpu, end - start), shown,
                     op if op is not node.op else None, getattr(result, "shape", None) if phase == FORWARD else None)
        return result

    def forward(self, node: Node, args: Sequence[Any], spec: Spec | None = None, trace=None,
                lane: str | None = None, ready: float | None = None, op: Op | None = None,
                expect: Spec | None = None):
        """The value of `node` computed from `args`, or a Failure; never raises for the vertex's own error.

        Args:
            spec: the concrete Spec of an output to put in a reused buffer from the
                executor's pool (the op must write into a given array: `op.writes_out`).
            trace: a `trace.StepTrace` to record the span in, or None.
            lane: the span's lane (None: this thread's).
            ready: when the vertex had all its inputs (default: now).
            op: what to run instead of the vertex's own op (a fused group ending at it).
            expect: the concrete Spec the output must have: an op whose forward returns
                another shape or dtype than its `infer` declared fails here, named.
        """
        for a in args:
            if type(a) is Failure:
                return a
        op = op or node.op
        buffer = None if spec is None or self.buffers is None else \
            self.buffers.take_like(spec.shape, spec.dtype, *args) if op.inplace else \
            self.buffers.take(spec.shape, spec.dtype)
        try:
            if trace is None:
                lock = self.blas_lock if op.blas else None
                if lock is None:
                    out = op.forward(self.xp, *args) if buffer is None else op.forward(self.xp, *args, out=buffer)
                else:
                    with lock:
                        out = op.forward(self.xp, *args) if buffer is None else op.forward(self.xp, *args, out=buffer)
            else:
                out = self._traced(node, op, op.forward, (self.xp, *args), buffer, trace, lane or thread_lane(),
                                   time.perf_counter() if ready is None else ready, FORWARD, args)
        except BaseException as exc:  # noqa: BLE001 - every failure of a vertex is the vertex's
            return _failed(node, args, exc, FORWARD)
        if expect is not None:
            wrong = output_mismatch(out, expect)
            if wrong is not None:
                return Failure(vertex_error(node, args, ShapeError(wrong), FORWARD))
        if self.check_numerics and _has_nan(self.xp, out):
            return Failure(nan_error(node, args, FORWARD))
        return out

    def derivative(self, node: Node, needs: tuple[bool, ...], g, xs: Sequence[Any], y, trace=None,
                   lane: str | None = None, ready: float | None = None):
        """The op's derivative rule applied: one gradient (or None) per input, or a Failure.

        A user op's rule has its results checked: one entry per input, each
        needed one of its input's shape (ShapeError or GraphError naming the op
        otherwise). The built-in rules are tested to hold to that already.
        """
        if type(g) is Failure:
            return g
        for a in xs:
            if type(a) is Failure:
                return a
        op = node.op
        args = (ArrayMath(self.xp, needs), g, xs, y)
        try:
            if trace is None:
                lock = self.blas_lock if op.blas else None
                if lock is None:
                    grads = op.vjp(*args)
                else:
                    with lock:
                        grads = op.vjp(*args)
            else:
                grads = self._traced(node, op, op.vjp, args, None, trace, lane or thread_lane(),
                                     time.perf_counter() if ready is None else ready, BACKWARD, [g, *xs])
            if not type(op).__module__.startswith("vertexflow."):
                check_rule_results(node, needs, grads, _array_shape)
        except BaseException as exc:  # noqa: BLE001
            return _failed(node, [g, *xs], exc, BACKWARD)
        if self.check_numerics:
            for gi in grads:
                if gi is not None and _has_nan(self.xp, gi):
                    return Failure(nan_error(node, [g, *xs], BACKWARD, "gradient"))
        return grads


def output_mismatch(out, expect: Spec) -> str | None:
    """How an op's output differs from the spec its shape rule declared, or None when it fits."""
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or dtype is None:
        return f"forward returned a {type(out).__name__}, not an array of {expect}"
    fits = len(shape) == len(expect.shape) and all(e is None or s == e for s, e in zip(shape, expect.shape))
    if fits and dtype == expect.dtype:
        return None
    return (f"forward returned an array of {format_shape(tuple(shape))} {dtype}, but the op's infer declared "
            f"{format_shape(expect.shape)} {expect.dtype}")


# -- vertices that await --------------------------------------------------------------------------
@types.coroutine
def _driven(coro):
    """Await `coro`, returning (its value, the seconds it ran itself between its awaits): its work."""
    busy = 0.0
    send, error = None, None
    while True:
        start = time.perf_counter()
        try:
            yielded = coro.throw(error) if error is not None else coro.send(send)
        except StopIteration as stop:
            busy += time.perf_counter() - start
            return stop.value, busy
        busy += time.perf_counter() - start
        try:
            send, error = (yield yielded), None
        except BaseException as exc:  # noqa: BLE001 - thrown in (a cancellation): passed to the coroutine
            send, error = None, exc


async def _awaited(node: Node, op: Op, fn, args: tuple, trace, lane: str, ready: float, phase: str, shown):
    """fn(*args) awaited; with a tracer, the await is a wait and the coroutine's own steps the span's work."""
    called = time.perf_counter()
    if trace is None:
        return await fn(*args)
    cpu = time.thread_time()
    result, busy = await _driven(fn(*args))
    end = time.perf_counter()
    start = max(called, end - busy)
    if start - called > 2e-6:
        trace.wait("await", node.name if phase == FORWARD else f"{node.name} (backward)", None, called, start)
    trace.record(node, phase, lane, min(ready, called), start, start, end, min(busy, time.thread_time() - cpu),
                 shown, op if op is not node.op else None, getattr(result, "shape", None) if phase == FORWARD else None)
    return result


async def forward_async(runner: VertexRunner, node: Node, args: Sequence[Any], trace=None, lane: str | None = None,
                        ready: float | None = None, expect: Spec | None = None):
    """`VertexRunner.forward` for an op whose forward is `async def`: awaited here, holding no thread."""
    for a in args:
        if type(a) is Failure:
            return a
    op = node.op
    try:
        out = await _awaited(node, op, op.forward, (runner.xp, *args), trace, lane or thread_lane(),
                             time.perf_counter() if ready is None else ready, FORWARD, args)
    except BaseException as exc:  # noqa: BLE001 - a cancellation too: the caller's scope re-raises it
        if isinstance(exc, trio.Cancelled):
            raise
        return _failed(node, args, exc, FORWARD)
    if expect is not None:
        wrong = output_mismatch(out, expect)
        if wrong is not None:
            return Failure(vertex_error(node, args, ShapeError(wrong), FORWARD))
    if runner.check_numerics and _has_nan(runner.xp, out):
        return Failure(nan_error(node, args, FORWARD))
    return out


async def derivative_async(runner: VertexRunner, node: Node, needs, g, xs, y, trace=None, lane: str | None = None):
    """`VertexRunner.derivative` for an op whose derivative rule is `async def`."""
    if type(g) is Failure:
        return g
    for a in xs:
        if type(a) is Failure:
            return a
    op = node.op
    try:
        grads = await _awaited(node, op, op.vjp, (ArrayMath(runner.xp, needs), g, xs, y), trace,
                               lane or thread_lane(), time.perf_counter(), BACKWARD, [g, *xs])
        check_rule_results(node, needs, grads, _array_shape)
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, trio.Cancelled):
            raise
        return _failed(node, [g, *xs], exc, BACKWARD)
    return grads


async def backward_vertex_async(runner: VertexRunner, reverse, node: Node, total, value_of, trace=None,
                                lane: str | None = None):
    """`backward_vertex` for a vertex whose derivative rule is `async def`."""
    outgoing = reverse.outgoing.get(node.id)
    if not outgoing:
        return []
    if total is None:
        grads: Any = [None] * len(node.inputs)
    elif type(total) is Failure:
        grads = [total] * len(node.inputs)
    else:
        xs = [value_of(i) for i in node.inputs]
        grads = await derivative_async(runner, node, reverse.needs[node.id], total, xs, value_of(node), trace, lane)
        if type(grads) is Failure:
            grads = [grads] * len(node.inputs)
    return [(edge, grads[pos]) for pos, edge in enumerate(outgoing) if edge >= 0]


def event_framework() -> str | None:
    """"trio" or "asyncio" when called from a task of one of them, else None."""
    try:
        trio.lowlevel.current_trio_token()
        return "trio"
    except RuntimeError:
        pass
    import asyncio

    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        return None


async def off_loop(fn):
    """fn() on a thread, awaited from the caller's trio or asyncio task (cancelling abandons it)."""
    if event_framework() == "asyncio":
        import asyncio

        return await asyncio.to_thread(fn)
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def run_awaitable(fn: Callable[[], Any]):
    """Await fn() from synchronous code (the tape running an async vertex): on the trio loop that started
    this thread (trio.from_thread), else in a trio loop of its own.

    Raises:
        AsyncContextError: called on a trio loop's own thread, which it would stall.
    """
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        pass
    else:
        from .errors import AsyncContextError

        raise AsyncContextError("a vertex awaits, and this call would block the trio loop it runs on: run the "
                                "graph with an ActorExecutor and `await executor.arun(...)`")
    try:
        return trio.from_thread.run(fn)
    except RuntimeError as exc:  # not a thread trio started: a loop of its own
        if "created by Trio" not in str(exc):
            raise
    return trio.run(_cancellable, fn)


# The trio loops of our own that await a vertex, by thread: a caller that gives up (a timeout) cancels
# them, so the thread does not wait forever for something that never comes.
_awaiting: dict[int, tuple[Any, trio.CancelScope]] = {}
_awaiting_lock = threading.Lock()


async def _cancellable(fn: Callable[[], Any]):
    ident = threading.get_ident()
    with trio.CancelScope() as scope:
        with _awaiting_lock:
            _awaiting[ident] = (trio.lowlevel.current_trio_token(), scope)
        try:
            return await fn()
        finally:
            with _awaiting_lock:
                _awaiting.pop(ident, None)
    from .errors import ExecutorClosed

    raise ExecutorClosed("the call awaiting this vertex was given up (its deadline passed)")


def cancel_awaits(threads: Iterable[int | None]) -> None:
    """Cancel the vertices that trio loops of our own await on these threads (by ident), if any."""
    for ident in threads:
        with _awaiting_lock:
            found = _awaiting.get(ident)
        if found is not None:
            token, scope = found
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass


def _array_shape(a) -> tuple:
    return tuple(a.shape)


# -- the pieces of a step around the vertices ------------------------------------------------------
def total_gradient(add: Callable, parts: Sequence[Any]):
    """`sum_edges` of a vertex's edge gradients, or the first Failure among them."""
    for part in parts:
        if type(part) is Failure:
            return part
    return sum_edges(add, parts)


def backward_vertex(runner: VertexRunner, reverse, node: Node, total, value_of: Callable[[Node], Any],
                    trace=None, lane: str | None = None, ready: float | None = None):
    """One vertex's step of the reverse sweep, given its summed gradient `total`.

    Returns:
        [(edge index, gradient or None or Failure)] for the edges it sends to its inputs.
    """
    outgoing = reverse.outgoing.get(node.id)
    if not outgoing:
        return []
    if total is None:
        grads: Any = [None] * len(node.inputs)
    elif type(total) is Failure:
        grads = [total] * len(node.inputs)
    else:
        xs = [value_of(i) for i in node.inputs]
        grads = runner.derivative(node, reverse.needs[node.id], total, xs, value_of(node), trace, lane, ready)
        if type(grads) is Failure:
            grads = [grads] * len(node.inputs)
    return [(edge, grads[pos]) for pos, edge in enumerate(outgoing) if edge >= 0]


def seed_gradient(xp, loss_value):
    """The gradient the reverse sweep starts from: ones shaped like the loss (a Failure passes on)."""
    if type(loss_value) is Failure:
        return loss_value
    return ArrayMath(xp).ones_like(loss_value)


def concrete_specs(order: Sequence[Node], values: Mapping[int, Any]) -> dict[int, Spec]:
    """Every vertex's Spec with the step's real sizes, from the source values' shapes, before anything runs.

    Args:
        order: the vertices in topological order (sources included).
        values: {source id: array} for the inputs fed (params and constants have fixed shapes).

    Raises:
        FeedError: the fed shapes do not fit some vertex (two batch sizes that differ, an
            index out of bounds), naming the vertex, its op and the shapes it was given.
    """
    specs: dict[int, Spec] = {}
    for node in order:
        if node.kind != "op":
            value = values.get(node.id)
            specs[node.id] = node.spec if value is None else Spec(tuple(value.shape), node.dtype)
            continue
        given = [specs[i.id] for i in node.inputs]
        try:
            specs[node.id] = node.op.infer(*given)
        except ShapeError as exc:
            shown = ", ".join(format_shape(s.shape) for s in given)
            raise FeedError(
                f"the feeds do not fit vertex {node.name!r} ({node.op_name}, built at {node.origin}): "
                f"it would get inputs of shapes {shown}: {exc}"
            ) from None
    return specs


def last_reads(reads: Sequence[Iterable[int]], pinned: Iterable[int] = ()) -> list[tuple[int, ...]]:
    """For a program of steps reading values, the values each step is the last to read.

    Args:
        reads: per step, the keys (vertex ids or slots) it reads.
        pinned: keys never let go (fetched values, values the reverse sweep needs).

    Returns:
        per step, the keys no later step reads, to let go right after it.
    """
    pinned = set(pinned)
    last: dict[int, int] = {}
    for index, keys in enumerate(reads):
        for key in keys:
            last[key] = index
    frees: list[list[int]] = [[] for _ in reads]
    for key, index in last.items():
        if key not in pinned:
            frees[index].append(key)
    return [tuple(sorted(f)) for f in frees]


def zero_gradient(node: Node, output_name: str, feeds: Mapping | None = None):
    """The gradient of a vertex the loss does not depend on: zeros of its shape."""
    if node.kind in ("param", "const"):
        return np.zeros_like(node.value)
    for key, value in (feeds or {}).items():
        if key is node or (isinstance(key, str) and key == node.name):
            return np.zeros(np.shape(value), node.dtype)
    if node.spec.static:
        return np.zeros(node.shape, node.dtype)
    raise GraphError(
        f"{output_name!r} does not depend on {node.name!r}, whose shape "
        f"{format_shape(node.shape)} is not known without running it"
    )


def gradient_result(reverse, totals: Mapping[int, Any], to_host: Callable | None, feeds: Mapping | None = None) -> dict:
    """{wrt vertex: gradient} as a backward call returns it (copied to the host by `to_host`, unless None);
    zeros for what the loss does not reach.

    Raises:
        the error of a Failure among the totals.
    """
    out = {}
    for w in reverse.wrt:
        total = totals.get(w.id)
        if type(total) is Failure:
            raise total.error
        if total is None:
            total = zero_gradient(w, reverse.output.name, feeds)
        elif to_host is not None:
            total = to_host(total)
        out[w] = total
    return out


def check_timeout(timeout, what: str = "timeout") -> float | None:
    """A call's deadline in seconds, or None; refused before anything runs if it is not a positive number.

    Raises:
        ValueError: zero, negative, NaN or not a number.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what}= takes a number of seconds > 0 (or None for no deadline), got {timeout!r}")
    return float(timeout)


def timeout_error(timeout: float, waiting: Mapping[str, str]) -> ExecutionTimeout:
    """The ExecutionTimeout of a step that did not finish, listing what each waiting vertex waits for."""
    shown = "; ".join(f"{name} waits for {what}" for name, what in list(waiting.items())[:10])
    more = f"; and {len(waiting) - 10} more" if len(waiting) > 10 else ""
    return ExecutionTimeout(
        f"step did not finish within {timeout} s; {len(waiting)} "
        f"{'vertex' if len(waiting) == 1 else 'vertices'} still waiting ({shown}{more})",
        waiting=dict(waiting),
    )


class WatchedThread:
    """Runs calls on a thread of its own, so that the caller can stop waiting at a deadline.

    A thread cannot be interrupted, so a call that overruns is left to finish
    where it is (its result dropped) and the next call gets a new thread: the
    caller returns in time whatever the call does. Used for `timeout=` by
    the executors whose vertices otherwise run on the caller's thread.
    """

    def __init__(self, name: str):
        self.name = name
        self.ident: int | None = None  # the thread's id, to read what it is running (sys._current_frames)
        self._thread: threading.Thread | None = None
        self._queue = None
        self._busy = threading.Event()
        self._lock = threading.Lock()

    def _start(self):
        import queue

        jobs: queue.SimpleQueue = queue.SimpleQueue()
        busy = self._busy = threading.Event()  # this thread's own: an abandoned one keeps its flag

        def work() -> None:
            while True:
                job = jobs.get()
                if job is None:
                    return
                fn, box, done = job
                busy.set()
                try:
                    box.append((True, fn()))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
                    box.append((False, exc))
                busy.clear()
                done.set()
                # Hold nothing of the call while waiting for the next: a bound method left in this frame
                # kept its executor alive, so a dropped executor's finalizer never stopped this thread.
                del job, fn, box, done

        thread = threading.Thread(target=work, name=self.name, daemon=True)
        thread.start()
        return thread, jobs

    def call(self, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
        """fn() on the watched thread: (True, its result), its exception raised, or (False, None)
        if it has not returned after `timeout` seconds (it goes on there)."""
        with self._lock:
            if self._thread is None:
                self._thread, self._queue = self._start()
                self.ident = self._thread.ident
            jobs = self._queue
        box: list = []
        done = threading.Event()
        jobs.put((fn, box, done))
        try:
            finished = done.wait(timeout)
        except BaseException:
            self._abandon(jobs)  # Ctrl-C while waiting: the call goes on without us
            raise
        if not finished:
            self._abandon(jobs)
            cancel_awaits([self.ident])  # an async vertex it awaits stops waiting; the thread then ends
            return False, None
        ok, value = box[0]
        if ok:
            return True, value
        raise value

    def _abandon(self, jobs) -> None:
        with self._lock:
            if self._queue is jobs:
                jobs.put(None)  # the old thread stops once its call returns
                self._thread = self._queue = None

    def close(self) -> None:
        """Stop the thread: joined when idle, so it is gone when close returns; one still in an
        overrunning call ends when that call returns."""
        with self._lock:
            thread, queue = self._thread, self._queue
            if queue is not None:
                queue.put(None)
            self._thread = self._queue = None
        if thread is not None and thread is not threading.current_thread() and not self._busy.is_set():
            thread.join(5.0)
