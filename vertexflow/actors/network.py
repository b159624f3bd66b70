"""A wired network of actors: the tasks, the step driver, their lifecycle and the results.

How a value travels (and the code behind each step):

1. `Network.submit` (the step driver) waits for a place in the window of
   `depth` steps in flight, then posts one message on the mailbox
   (`mailbox.py`) of every actor that reads sources, carrying their values:
   feeds, the params' current values, constants.
2. Each actor (`actor.py`) walks its program (`program.py`): it
   takes the values a segment reads from its mailbox (mail for later steps is
   kept aside), has the segment computed where its placement says
   (`placement.py`: inline, on a worker thread, on CUDA streams), each vertex
   by the one execution core (`core.VertexRunner`), and sends the segment's
   last value once to every actor that reads it; a fetched value is filed
   under its step (`Network.deliver`). On a worker, the trio thread steps
   aside: the segment is queued by whichever thread posts its last input
   (`Mailbox.start_when_in`: a worker queues the join of a branch it just
   finished), and the worker that runs it sends its value on and takes on
   the actor's next segment when that one's inputs are in and nothing queued
   comes first (`Actor._onward`): a chain of segments costs one hand-off.
   The actor's task only learns that its segments ran.
3. In a backward network, each actor then walks its members from the output
   side back (`Actor._backward`): it takes the edge gradients its members'
   consumers sent, sums them in the plan's fixed order (`core.total_gradient`),
   applies the derivative rule (`core.backward_vertex`, where the placement
   says) and sends one edge gradient per input to the actor owning that input.
4. A step whose fetched values (and wanted gradients) are all filed frees its
   place in the window and wakes whoever waits for it (`Network.result`, or
   the `on_done` of a step begun with `Network.start`). When the last value
   is filed on a worker, that worker hands the results to the caller itself
   (`deliver_from_thread`); the trio thread frees the place after.

A vertex that fails produces a `Failure` instead of a value. Failures flow on
like values (every actor still sends every message), so the network stays in
step and the failure is raised for that step alone. Sends never block: the
window bounds the steps in flight and each mailbox holds all the messages of
that many steps, so no actor waits on another to drain. A timeout or a
cancellation mid-step tears the network down; the next run wires a new one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core import FORWARD, Failure, VertexRunner
from ..errors import InternalError
from .actor import Actor, ActorStatus, Doing
from .mailbox import Mailbox
from .placement import Inline, OnStreams, OnWorker
from .plan import SOURCE_KINDS, NetworkPlan
from .program import ActorProgram, compile_program


@dataclass
class StepState:
    expected: int
    values: dict[int, Any] = field(default_factory=dict)
    grads: dict[int, Any] = field(default_factory=dict)
    trace: Any = None  # the StepTrace its spans go to, or None
    submitted: float = 0.0
    slot: int = 0  # which of the window's places it holds (CUDA events are per place)
    pooled: dict = field(default_factory=dict)  # {vertex id: Spec} of the outputs that go in reused buffers
    specs: dict | None = None  # {vertex id: Spec}: the step's concrete specs (what segments are compiled for)
    done: trio.Event = field(default_factory=trio.Event)
    discarded: bool = False
    error: BaseException | None = None
    sliced: bool = True  # record the step's slice when its results are in (a stream's step)
    on_done: Any = None  # called with this state when it is done, when nobody awaits `Network.result`
    handed: bool = False  # on_done was called (from a worker); the trio thread only settles the rest

    def received(self) -> int:
        return len(self.values) + len(self.grads)


class Network:
    """The running actors for one set of fetches (and one reverse plan, for backward).

    Args:
        plan: the partition into actors (plan.py).
        runner: the execution core, as the executor configured it.
        pool: the worker pool for expensive segments, or None (everything inline).
        blas_lock: held around BLAS calls on workers (None: BLAS calls may overlap).
        depth: steps in flight at most.
        streams: (runtime, stream plan) to launch every vertex on CUDA streams instead.
    """

    def __init__(self, plan: NetworkPlan, runner: VertexRunner, pool, blas_lock, depth: int, streams=None):
        self.plan = plan
        self.depth = depth
        self.xp = runner.xp
        self.buffers = runner.buffers  # for the trace's counter of the pool's bytes
        inline = Inline(runner)
        if streams is not None:
            runtime, stream_plan = streams
            self.streams: OnStreams | None = OnStreams(runner, runtime, stream_plan)
            self.placements = [self.streams] * len(plan.actors)
            pool = None
        else:
            self.streams = None
            worker = OnWorker(runner.with_blas_lock(blas_lock), pool) if pool is not None else inline
            self.placements = [worker if a.heavy and pool is not None else inline for a in plan.actors]
        self.inline = inline
        self.programs: list[ActorProgram] = [compile_program(a, plan, workers=pool is not None) for a in plan.actors]
        self.fetch_ids = {n.id for n in plan.fetch}
        reverse = plan.reverse
        self.wrt_ids = set() if reverse is None else {w.id for w in reverse.wrt if w.id in reverse.incoming}
        self.expected = len(self.fetch_ids) + len(self.wrt_ids)
        self.mailboxes = [
            Mailbox(depth * (len(a.sources) + len(a.value_from) + len(a.grad_from)) + 1) for a in plan.actors
        ]
        self.window = trio.Semaphore(depth)
        self.free_slots = list(range(depth))
        self.steps: dict[int, StepState] = {}
        self.next_step = 0
        self.status = [ActorStatus() for _ in plan.actors]
        self.broken: BaseException | None = None
        self.cancel_scope: trio.CancelScope | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.results_lock = threading.Lock()  # the steps' results are filed from workers too
        self.blas_share = None  # a context-manager factory sharing BLAS's threads out while steps run

    # -- lifecycle -------------------------------------------------------------
    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.token = trio.lowlevel.current_trio_token()  # workers post values to the actors through it
        async with trio.open_nursery() as nursery:
            self.cancel_scope = nursery.cancel_scope
            for program in self.programs:
                nursery.start_soon(self._guard, program, name=f"vf actor {program.actor.name}")
            task_status.started()

    async def _guard(self, program: ActorProgram) -> None:
        try:
            await Actor(self, program).run()
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
        for step, state in list(self.steps.items()):
            if state.error is None:
                state.error = self.broken
            self._finish(step, state)

    # -- driver ----------------------------------------------------------------
    async def submit(self, sources: dict[int, Any], trace=None, pooled=None, specs=None, sliced: bool = True) -> int:
        """Start a step with these source values (recording spans into `trace`); returns its number.

        With `sliced`, the trace gets the step's slice from here to its results (a stream's step; a
        single call records its own, from the caller's entry to its return)."""
        if self.broken is not None:
            raise self.broken
        try:
            self.window.acquire_nowait()
        except trio.WouldBlock:
            await self.window.acquire()
        if self.broken is not None:
            self.window.release()
            raise self.broken
        return self._post_sources(sources, trace, pooled, specs, sliced)

    def start(self, sources: dict[int, Any], on_done, trace=None, pooled=None, specs=None,
              sliced: bool = True) -> int | None:
        """Start a step at once if it has a place in the window (else None, nothing started); `on_done(state)`
        is called on this thread when its results are in or it failed, instead of anyone awaiting `result`."""
        if self.broken is not None:
            return None
        try:
            self.window.acquire_nowait()
        except trio.WouldBlock:
            return None
        step = self._post_sources(sources, trace, pooled, specs, sliced)
        self.steps[step].on_done = on_done
        return step

    def _post_sources(self, sources, trace, pooled, specs, sliced: bool) -> int:
        """The step's state and its source values posted (its place in the window taken)."""
        step = self.next_step
        self.next_step += 1
        slot = self.free_slots.pop()
        self.steps[step] = StepState(self.expected, trace=trace, slot=slot, pooled=pooled or {}, specs=specs,
                                     submitted=time.perf_counter(), sliced=sliced)
        if trace is not None:
            trace.counter("steps", "in flight", len(self.steps))
        for actor, mailbox in zip(self.plan.actors, self.mailboxes):
            if actor.sources:
                mailbox.post(step, FORWARD, {s.id: sources[s.id] for s in actor.sources})
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

    def deliver(self, step: int, phase: str, key: int, value) -> None:
        """File a fetched value or a wrt gradient under its step; wake the step's waiter when complete."""
        state = self.steps.get(step)
        if state is None:
            raise InternalError(f"{phase} result for unknown step {step}")
        with self.results_lock:
            complete = self._file(state, phase, key, value)
        if complete:
            self._complete(step, state, time.perf_counter())

    def deliver_from_thread(self, step: int, key: int, value) -> None:
        """`deliver` of a fetched value from a worker thread. If it completes the step, the caller gets
        its results from here (no trip through the trio thread on the way back); the network's own
        bookkeeping (the window, the trace) follows on the trio thread."""
        state = self.steps.get(step)
        if state is None:
            return  # torn down meanwhile
        with self.results_lock:
            complete = self._file(state, FORWARD, key, value)
            on_done = state.on_done if complete and self.streams is None and not state.discarded else None
            if on_done is not None:
                state.on_done, state.handed = None, True  # called here, once
        if not complete:
            return
        now = time.perf_counter()
        if on_done is not None:
            on_done(state)
        try:
            self.token.run_sync_soon(self._complete, step, state, now)
        except trio.RunFinishedError:
            pass  # the host is gone

    def _file(self, state: StepState, phase: str, key: int, value) -> bool:
        """Keep a result (results_lock held); whether it was the step's last."""
        if type(value) is Failure and state.error is None:
            state.error = value.error
        (state.values if phase == FORWARD else state.grads)[key] = value
        return state.received() == state.expected

    def _complete(self, step: int, state: StepState, at: float) -> None:
        """A step's results are all in (on the trio thread): its waiter woken, its place in the window freed."""
        if self.streams is not None:
            # The fetches are complete: now, and only now, the host waits for the kernels.
            self.streams.step_done(state.slot, state.trace)
        self.free_slots.append(state.slot)
        if state.trace is not None:
            if state.sliced:
                state.trace.slice(state.submitted, at)
            state.trace.counter("steps", "in flight", len(self.steps) - 1)
            if self.buffers is not None:
                state.trace.counter("buffer pool", "MB", self.buffers.held_bytes() / 2**20)
        self._finish(step, state)
        self.window.release()

    def _finish(self, step: int, state: StepState) -> None:
        """The step's results are in (or it failed): wake its waiter, or hand them to its `on_done`."""
        if state.done.is_set():
            return
        state.done.set()
        with self.results_lock:
            on_done, state.on_done = state.on_done, None  # the state goes to the caller: no cycle back to it
        if on_done is not None or state.discarded or state.handed:  # nobody will ask for it with `result`
            self.steps.pop(step, None)
        if on_done is not None and not state.discarded:
            on_done(state)

    # -- diagnostics ---------------------------------------------------------------
    def waiting(self, step: int) -> dict[str, str]:
        """{vertex: what it waits for} for the actors not yet done with `step`."""
        return waiting(self.plan, self.status, step)

    # -- actors ------------------------------------------------------------------
    def state(self, step: int) -> StepState:
        state = self.steps.get(step)
        if state is None:
            raise InternalError(f"an actor reached step {step}, which the driver never submitted")
        return state


def waiting(plan: NetworkPlan, statuses, step: int) -> dict[str, str]:
    """{vertex: what it waits for} for the actors of `plan` not yet done with `step`."""
    out: dict[str, str] = {}
    for index, status in enumerate(statuses):
        vertex, at_step, doing = status.vertex, status.step, status.doing
        if vertex is None or doing is Doing.IDLE or at_step > step:
            continue
        members = plan.actors[index].members
        if doing is not Doing.DERIVATIVE and doing is not Doing.GRADIENT:
            # Members after the current one in this actor have not run either.
            pending = {m.id for m in members if m.id >= vertex.id}
            for member in members:
                if member.id <= vertex.id or member.kind != "op":
                    continue
                pos, inp = next(((p, i) for p, i in enumerate(plan.inputs_of(member)) if i.id in pending),
                                (None, None))
                out[member.name] = (
                    f"input {pos} ({inp.name!r}), from its own actor (step {at_step})" if inp is not None
                    else f"its turn after {vertex.name!r} in its actor (step {at_step})"
                )
        if doing is Doing.RUNNING:
            out[vertex.name] = f"running {vertex.op_name} to return (step {at_step})"
        elif doing is Doing.DERIVATIVE:
            out[vertex.name] = f"running the derivative of {vertex.op_name} to return (step {at_step})"
        elif doing is Doing.FEED:
            out[vertex.name] = f"its feed (step {at_step})"
        elif doing is Doing.GRADIENT:
            consumer = plan.reverse.senders[status.detail][0]
            out[vertex.name] = f"the gradient from {consumer.name!r} (step {at_step})"
        else:
            inp = plan.inputs_of(vertex)[status.detail]
            source = "the step's feeds" if inp.kind in SOURCE_KINDS else (
                f"actor {plan.actors[plan.actor_of[inp.id]].name}")
            out[vertex.name] = f"input {status.detail} ({inp.name!r}) from {source} (step {at_step})"
    return out
