"""A wired network of actors: the tasks, their inboxes, the step driver and the results.

Messages are `(step, phase, payload)` tuples on trio memory channels; each
actor has one inbox. A step travels like this:

1. `submit` (the driver) waits for a place in the window of `depth` steps in
   flight, then puts one message on the inbox of every actor that reads
   sources, carrying their values: feeds, the params' current values, constants.
2. Each actor runs its members in topological order. Before a member runs,
   the actor takes the values it reads from its inbox (mail for later steps is
   kept aside), computes inline or on a worker thread, and sends the result
   once to every actor that reads it; a fetched value is filed under its step.
3. In a backward network, each actor then walks its members from the output
   side back: it takes the edge gradients its members' consumers sent, sums
   them in the plan's fixed order, applies the derivative rule, and sends one
   edge gradient per input to the actor owning that input.
4. A step whose fetched values (and wanted gradients) are all filed frees its
   place in the window and wakes whoever waits for it.

A vertex that fails produces a `Failure` instead of a value. Failures flow on
like values (every actor still sends every message), so the network stays in
step and the failure is raised for that step alone. Sends never
block: the window bounds the steps in flight and each inbox holds all the
messages of that many steps, so no actor waits on another to drain. A timeout
or a cancellation mid-step tears the network down; the next run wires a new
one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from ..autodiff.namespace import ArrayMath
from ..autodiff.reverse import send_gradients
from ..errors import ExecutionTimeout, InternalError, VertexflowError
from ..executor import nan_error, vertex_error
from ..graph import Node
from .plan import SOURCE_KINDS, ActorPlan, NetworkPlan

FORWARD, BACKWARD = "forward", "backward"
_MISSING = object()


class Failure:
    """Stands in for the value of a vertex that failed (or that read a failed value)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


@dataclass
class StepState:
    expected: int
    values: dict[int, Any] = field(default_factory=dict)
    grads: dict[int, Any] = field(default_factory=dict)
    tracer: Any = None
    trace_step: int = 0  # the executor-wide step number spans carry
    done: trio.Event = field(default_factory=trio.Event)
    discarded: bool = False
    error: BaseException | None = None

    def received(self) -> int:
        return len(self.values) + len(self.grads)


class Network:
    """The running actors for one set of fetches (and one reverse plan, for backward)."""

    def __init__(self, executor, plan: NetworkPlan, depth: int):
        self.executor = executor
        self.plan = plan
        self.depth = depth
        self.xp = executor.xp
        self.pool = executor._pool
        # BLAS calls on workers take turns, each with all of BLAS's threads, unless the
        # executor shares the cores out instead (blas="share").
        self.blas_lock = self.pool.blas_lock if self.pool is not None and executor.blas == "keep" else None
        # On a GPU, an actor enqueues each vertex's kernels on the stream the stream plan gives
        # it (after waiting for the events of producers on other streams) and does not wait:
        # no worker threads; the host synchronizes only when a step's fetches are complete.
        self.gpu = None
        if executor.backend.name in ("cuda", "emulated-cuda"):
            from ..gpu.runtime import CheckedStreams, CupyStreams
            from ..gpu.streams import plan_streams

            targets = list(plan.fetch) + ([plan.reverse.output] if plan.reverse is not None else [])
            self.stream_plan = plan_streams(targets, executor.streams)
            runtime = CupyStreams if executor.backend.name == "cuda" else CheckedStreams
            self.gpu = runtime(self.stream_plan.streams, len(self.stream_plan.record))
            self.pool = None
            self.blas_lock = None
        self.fetch_ids = {n.id for n in plan.fetch}
        reverse = plan.reverse
        self.wrt_ids = set() if reverse is None else {w.id for w in reverse.wrt if w.id in reverse.incoming}
        self.expected = len(self.fetch_ids) + len(self.wrt_ids)
        self.inboxes = []
        for actor in plan.actors:
            per_step = 1 + len(actor.value_from) + len(actor.grad_from)
            self.inboxes.append(trio.open_memory_channel(depth * per_step + 1))
        self.window = trio.Semaphore(depth)
        self.steps: dict[int, StepState] = {}
        self.next_step = 0
        # Per actor: (step, vertex or None when idle, what it waits for: input position,
        # -1 its feed, -2 its op running, -3 its derivative running, ("edge", k) a gradient).
        self.status: list[tuple[int, Any, Any]] = [(-1, None, 0)] * len(plan.actors)
        self.broken: BaseException | None = None
        self.cancel_scope: trio.CancelScope | None = None

    # -- lifecycle -------------------------------------------------------------
    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.cancel_scope = nursery.cancel_scope
            for actor in self.plan.actors:
                nursery.start_soon(self._guard, self._run_actor, actor, name=f"vf actor {actor.name}")
            task_status.started()

    async def _guard(self, fn, *args) -> None:
        try:
            await fn(*args)
        except Exception as exc:  # a bug in vertexflow, not in a vertex: fail every waiting step
            error = InternalError(f"actor network failed unexpectedly: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self.shutdown(error)

    def shutdown(self, error: BaseException) -> None:
        """Stop every task of this network and fail the steps still in flight."""
        if self.broken is None:
            self.broken = error
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        for state in self.steps.values():
            if state.error is None:
                state.error = self.broken
            state.done.set()

    # -- driver ----------------------------------------------------------------
    async def submit(self, sources: dict[int, Any], tracer=None, trace_step: int = 0) -> int:
        """Start a step with these source values (recording spans into `tracer`); returns its number."""
        if self.broken is not None:
            raise self.broken
        try:
            self.window.acquire_nowait()
        except trio.WouldBlock:
            await self.window.acquire()
        if self.broken is not None:
            self.window.release()
            raise self.broken
        step = self.next_step
        self.next_step += 1
        self.steps[step] = StepState(self.expected, tracer=tracer, trace_step=trace_step)
        # No await from here on: a step is either fully submitted or not at all.
        for actor in self.plan.actors:
            if actor.sources:
                payload = {s.id: sources[s.id] for s in actor.sources}
                self._send(self.inboxes[actor.index][0], (step, FORWARD, payload))
        return step

    async def result(self, step: int) -> StepState:
        state = self.steps[step]
        try:
            await state.done.wait()
        finally:
            if state.done.is_set():
                self.steps.pop(step, None)
            else:
                state.discarded = True  # the waiter was cancelled; the step still completes
        if state.error is not None:
            raise state.error
        return state

    def discard(self, step: int) -> None:
        """Nobody will wait for this step: drop its results when they come."""
        state = self.steps.get(step)
        if state is not None:
            if state.done.is_set():
                self.steps.pop(step, None)
            else:
                state.discarded = True

    def waiting(self, step: int) -> dict[str, str]:
        """{vertex: what it waits for} for the actors not yet done with `step`."""
        out = {}
        plan = self.plan
        for index, (at_step, vertex, what) in enumerate(self.status):
            if vertex is None or at_step > step:
                continue
            # In the forward phase, members after the current one in this actor have not run either.
            forward = isinstance(what, int) and what != -3
            pending = {m.id for m in plan.actors[index].members if m.id >= vertex.id}
            for member in plan.actors[index].members if forward else ():
                if member.id <= vertex.id or member.kind != "op":
                    continue
                pos, inp = next(((p, i) for p, i in enumerate(member.inputs) if i.id in pending), (None, None))
                out[member.name] = (
                    f"input {pos} ({inp.name!r}), from its own actor (step {at_step})" if inp is not None
                    else f"its turn after {vertex.name!r} in its actor (step {at_step})"
                )
            if what == -2:
                out[vertex.name] = f"running {vertex.op_name} to return (step {at_step})"
            elif what == -3:
                out[vertex.name] = f"running the derivative of {vertex.op_name} to return (step {at_step})"
            elif what == -1:
                out[vertex.name] = f"its feed (step {at_step})"
            elif isinstance(what, tuple):
                consumer = plan.reverse.senders[what[1]][0]
                out[vertex.name] = f"the gradient from {consumer.name!r} (step {at_step})"
            else:
                inp = vertex.inputs[what]
                source = "the step's feeds" if inp.kind in SOURCE_KINDS else (
                    f"actor {plan.actors[plan.actor_of[inp.id]].name}")
                out[vertex.name] = f"input {what} ({inp.name!r}) from {source} (step {at_step})"
        return out

    # -- results -----------------------------------------------------------------
    def _deliver(self, step: int, phase: str, key: int, value) -> None:
        """File a fetched value or a wrt gradient under its step; wake the step's waiter when complete."""
        state = self.steps.get(step)
        if state is None:
            raise InternalError(f"{phase} result for unknown step {step}")
        if isinstance(value, Failure) and state.error is None:
            state.error = value.error
        (state.values if phase == FORWARD else state.grads)[key] = value
        if state.received() == state.expected:
            if self.gpu is not None:
                self.gpu.synchronize()  # the fetches are complete: now, and only now, the host waits
                if state.tracer is not None:
                    self._file_gpu_spans(step, state)
            state.done.set()
            self.window.release()
            if state.discarded:
                self.steps.pop(step, None)

    # -- actors ------------------------------------------------------------------
    def _send(self, channel, message) -> None:
        try:
            channel.send_nowait(message)
        except trio.WouldBlock:
            raise InternalError("an actor inbox overflowed; the step window should prevent this") from None

    async def _take(self, actor: ActorPlan, mail: dict, step: int, phase: str, key: int, waiter):
        """The value (or edge gradient) `key` of `step` from the inbox, keeping other mail aside.

        `waiter` says who waits, for diagnostics: (member, input position), or
        (member, -1) for a source's feed, or (vertex, edge) in the backward phase.
        """
        box = mail.get((step, phase))
        if box is None:
            box = mail[(step, phase)] = {}
        if key not in box:
            self.status[actor.index] = (step, waiter[0], waiter[1] if phase == FORWARD else ("edge", waiter[1]))
            receive = self.inboxes[actor.index][1]
            while key not in box:
                at, ph, payload = await receive.receive()
                target = mail.get((at, ph))
                if target is None:
                    mail[(at, ph)] = payload
                else:
                    target.update(payload)
        value = box.pop(key)
        if not box:
            mail.pop((step, phase), None)
        return value

    def _segments(self, actor: ActorPlan) -> list[tuple[list, list, bool]]:
        """The actor's forward program, worked out once: runs of members with what they take first.

        Each segment is (takes, entries, on_worker): the values to take from the
        inbox before it, as (key, member, input position), then members computed
        in one go, inline or in one worker hand-off. A segment ends before a
        member that needs a value from outside not yet taken, and after a member
        whose value leaves the actor (its readers should not wait for the rest).
        """
        sends = [self.inboxes[i][0] for i in range(len(self.plan.actors))]
        heavy_ids = actor.heavy_ids if self.pool is not None else set()
        segments: list[tuple[list, list, bool]] = []
        takes: list = []
        entries: list = []
        on_worker = False
        have: set[int] = set()

        def close():
            nonlocal takes, entries, on_worker
            if takes or entries:
                segments.append((takes, entries, on_worker))
            takes, entries, on_worker = [], [], False

        for member in actor.members:
            readers = tuple(sends[r] for r in actor.value_to.get(member.id, ()))
            fetched = member.id in self.fetch_ids
            if member.kind in SOURCE_KINDS:
                if entries:
                    close()
                takes.append((member.id, member, -1))
                have.add(member.id)
                if readers or fetched:
                    entries.append((member, True, (), readers, fetched))
                    close()
                continue
            missing = [(i.id, member, pos) for pos, i in enumerate(member.inputs) if i.id not in have]
            if missing and entries:
                close()
            for key, m, pos in missing:
                if key not in have:
                    takes.append((key, m, pos))
                    have.add(key)
            entries.append((member, False, tuple(i.id for i in member.inputs), readers, fetched))
            on_worker = on_worker or member.id in heavy_ids
            have.add(member.id)
            if readers or fetched:
                close()
        close()
        # Let each value go once the last member here that reads it has run (a tape's
        # habit: a step holding every intermediate array thrashes the caches), unless
        # the reverse sweep will need it.
        keep: set[int] = set()
        if self.plan.reverse is not None:
            for node in actor.backward:
                keep.add(node.id)
                keep.update(i.id for i in node.inputs)
        last: dict[int, int] = {}
        order = [entry for _, entries, _ in segments for entry in entries]
        for index, entry in enumerate(order):
            for key in entry[2]:
                last[key] = index
        frees: dict[int, list[int]] = {}
        for key, index in last.items():
            if key not in keep:
                frees.setdefault(index, []).append(key)
        counter = iter(range(len(order)))
        return [
            (takes, [(*entry, tuple(frees.get(next(counter), ()))) for entry in entries], on_worker)
            for takes, entries, on_worker in segments
        ]

    async def _run_actor(self, actor: ActorPlan) -> None:
        np.seterr(all="ignore")  # this task's numpy error state; numerics are checked by check_numerics
        plan = self.plan
        sends = [self.inboxes[i][0] for i in range(len(plan.actors))]
        segments = self._segments(actor)
        mail: dict = {}
        step = 0
        while True:
            values: dict[int, Any] = {}
            for takes, entries, on_worker in segments:
                for key, member, pos in takes:
                    values[key] = await self._take(actor, mail, step, FORWARD, key, (member, pos))
                if not entries:
                    continue
                self.status[actor.index] = (step, entries[0][0], -2)
                if on_worker:
                    await self.pool.run(self._run_batch, entries, values, step, time.perf_counter(), True)
                else:
                    self._run_batch(entries, values, step, time.perf_counter())
                member, _, _, readers, fetched, _ = entries[-1]
                if readers:
                    message = (step, FORWARD, {member.id: values[member.id]})
                    for channel in readers:
                        self._send(channel, message)
                if fetched:
                    self._deliver(step, FORWARD, member.id, values[member.id])
            if plan.reverse is not None and actor.backward:
                await self._backward(actor, mail, step, values, sends)
            self.status[actor.index] = (step, None, 0)
            step += 1

    async def _backward(self, actor: ActorPlan, mail: dict, step: int, values: dict, sends) -> None:
        reverse = self.plan.reverse
        if self.gpu is not None:
            # Derivative kernels run on the current stream: let this step's forward finish first.
            self.gpu.synchronize()
        edges: dict[int, Any] = {}
        add = ArrayMath(self.xp).add
        for node in actor.backward:
            total = None
            for edge in reverse.incoming[node.id]:
                if edge == 0:
                    y = values[node.id]
                    part = y if isinstance(y, Failure) else ArrayMath(self.xp).ones_like(y)
                elif edge in actor.grad_from:
                    part = await self._take(actor, mail, step, BACKWARD, edge, (node, edge))
                else:
                    part = edges.pop(edge, None)
                if part is None:
                    continue
                if isinstance(total, Failure):
                    continue
                total = part if total is None or isinstance(part, Failure) else add(total, part)
            if node.id in self.wrt_ids:
                self._deliver(step, BACKWARD, node.id, total)
            if node.kind != "op":
                continue
            outgoing = reverse.outgoing[node.id]
            if total is None:
                grads = [None] * len(node.inputs)
            elif isinstance(total, Failure):
                grads = [total] * len(node.inputs)
            else:
                xs = [values[i.id] for i in node.inputs]
                ready = time.perf_counter()
                self.status[actor.index] = (step, node, -3)
                grads = await self._vjp(node, reverse.needs[node.id], total, xs, values[node.id], step, ready)
            for pos, edge in enumerate(outgoing):
                if edge < 0:
                    continue
                gi = grads[pos] if pos < len(grads) else None
                target = actor.grad_to.get(edge)
                if target is None:
                    edges[edge] = gi
                else:
                    self._send(sends[target], (step, BACKWARD, {edge: gi}))

    # -- computing one vertex --------------------------------------------------------
    def _tracer(self, step: int):
        state = self.steps.get(step)
        return None if state is None else state.tracer

    def _trace_step(self, step: int) -> int:
        state = self.steps.get(step)
        return step if state is None else state.trace_step

    def _run_batch(self, batch: list, values: dict, step: int, ready: float, on_worker: bool = False) -> None:
        """Compute a run of members in order, filing each output (or Failure) in `values`.

        Runs on the trio thread or, for a batch holding expensive members, on a
        worker (one hand-off for the whole run). BLAS-calling members on a worker
        hold the pool's BLAS lock (DESIGN decision 5).
        """
        state = self.steps[step]
        tracer, check = state.tracer, self.executor.check_numerics
        xp = self.xp
        blas_lock = self.blas_lock if on_worker else None
        lane = _lane() if tracer is not None else None
        for member, is_source, input_ids, _, _, free in batch:
            if is_source:
                continue
            args = [values[k] for k in input_ids]
            out = None
            for a in args:
                if type(a) is Failure:
                    out = a
                    break
            if out is None and self.gpu is not None:
                out = self._launch(member, args, step, tracer is not None)
            elif out is None:
                start = time.perf_counter() if tracer is not None else 0.0
                try:
                    if blas_lock is not None and member.op.blas:
                        with blas_lock:
                            out = member.op.forward(xp, *args)
                    else:
                        out = member.op.forward(xp, *args)
                except Exception as exc:
                    out = _failure(vertex_error(member, args, exc, FORWARD), exc)
                else:
                    if tracer is not None:
                        end = time.perf_counter()
                        tracer.record(member, FORWARD, state.trace_step, lane, ready, start, end, args)
                        ready = end
                    if check and out.dtype.kind == "f" and bool(xp.isnan(out).any()):
                        out = Failure(nan_error(member, args, FORWARD))
            values[member.id] = out
            for key in free:
                del values[key]

    def _launch(self, member: Node, args: list, step: int, timed: bool):
        """Enqueue a vertex on its planned CUDA stream, after the events it needs; returns its (future) value.

        When the step is traced, CUDA events time the kernels; the spans are filed
        once the step's fetches are complete (see _deliver).
        """
        plan = self.stream_plan
        box = {}

        def kernels():
            box["out"] = member.op.forward(self.xp, *args)

        self.gpu.timed = timed
        try:
            self.gpu.launch(plan.stream[member.id], kernels, plan.waits.get(member.id, ()),
                            plan.record.get(member.id), tag=(member, step, [getattr(a, "shape", ()) for a in args]))
        except Exception as exc:
            return _failure(vertex_error(member, args, exc, FORWARD), exc)
        return box["out"]

    def _file_gpu_spans(self, step: int, state) -> None:
        """Turn the CUDA-event timings of a finished step into spans, one lane per stream."""
        for stream, (member, at, shapes), start, end in self.gpu.spans:
            if at == step:
                state.tracer.record(member, FORWARD, state.trace_step, f"cuda-stream-{stream}", start, start, end,
                                    [_Shaped(s) for s in shapes])
        self.gpu.marks = [m for m in self.gpu.marks if m[1][1] != step]

    async def _vjp(self, node: Node, needs, g, xs, y, step: int, ready: float):
        if self.pool is not None and node.id in self.plan.actors[self.plan.actor_of[node.id]].heavy_ids:
            if node.op.blas and self.blas_lock is not None:
                return await self.pool.run(self._locked, self._call_vjp, node, needs, g, xs, y, step, ready)
            return await self.pool.run(self._call_vjp, node, needs, g, xs, y, step, ready)
        return self._call_vjp(node, needs, g, xs, y, step, ready)

    def _locked(self, fn, *args):
        with self.blas_lock:
            return fn(*args)

    def _call_vjp(self, node: Node, needs, g, xs, y, step: int, ready: float):
        executor = self.executor
        tracer = self._tracer(step)
        start = tracer.now() if tracer is not None else 0.0
        try:
            grads = node.op.vjp(ArrayMath(self.xp, needs), g, xs, y)
            # Check the rule's results as the sequential sweep does (same errors, same words).
            send_gradients(self.plan.reverse, node, grads, {}, lambda a: tuple(a.shape))
        except VertexflowError as exc:
            return [Failure(exc)] * len(node.inputs)
        except Exception as exc:
            return [_failure(vertex_error(node, [g, *xs], exc, BACKWARD), exc)] * len(node.inputs)
        if tracer is not None:
            tracer.record(node, BACKWARD, self._trace_step(step), _lane(), ready, start, tracer.now(), [g, *xs])
        if executor.check_numerics:
            for gi in grads:
                if gi is not None and gi.dtype.kind == "f" and bool(self.xp.isnan(gi).any()):
                    return [Failure(nan_error(node, [g, *xs], BACKWARD, "gradient"))] * len(node.inputs)
        return list(grads)


class _Shaped:
    """Stands in for an array in a span's record: only its shape is read."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape


def _failure(error: BaseException, cause: BaseException) -> Failure:
    error.__cause__ = cause
    return Failure(error)


def _lane() -> str:
    name = threading.current_thread().name
    return name if name.startswith("vf-worker") else "trio"


def timeout_error(network: Network, step: int, timeout: float) -> ExecutionTimeout:
    waiting = network.waiting(step)
    shown = "; ".join(f"{k} waits for {v}" for k, v in list(waiting.items())[:10])
    return ExecutionTimeout(
        f"step did not finish within {timeout} s; {len(waiting)} vertices still waiting ({shown})",
        waiting=waiting,
    )

