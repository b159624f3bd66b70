"""A wired network of actors: the tasks, the step driver, their lifecycle and the results.

How a value travels (and the code behind each step):

1. `Network.submit` (the step driver) waits for a place in the window of
   `depth` steps in flight, then posts one message on the mailbox
   (`mailbox.py`) of every actor that reads sources, carrying their values:
   feeds, the params' current values, constants.
2. Each actor (`Network._run_actor`) walks its program (`program.py`): it
   takes the values a segment reads from its mailbox (mail for later steps is
   kept aside), has the segment computed where its placement says
   (`placement.py`: inline, on a worker thread, on CUDA streams), each vertex
   by the one execution core (`core.VertexRunner`), and sends the segment's
   last value once to every actor that reads it; a fetched value is filed
   under its step (`Network._deliver`).
3. In a backward network, each actor then walks its members from the output
   side back (`Network._backward`): it takes the edge gradients its members'
   consumers sent, sums them in the plan's fixed order (`core.total_gradient`),
   applies the derivative rule (`core.backward_vertex`, where the placement
   says) and sends one edge gradient per input to the actor owning that input.
4. A step whose fetched values (and wanted gradients) are all filed frees its
   place in the window and wakes whoever waits for it (`Network.result`).

A vertex that fails produces a `Failure` instead of a value. Failures flow on
like values (every actor still sends every message), so the network stays in
step and the failure is raised for that step alone. Sends never block: the
window bounds the steps in flight and each mailbox holds all the messages of
that many steps, so no actor waits on another to drain. A timeout or a
cancellation mid-step tears the network down; the next run wires a new one.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from ..autodiff.namespace import ArrayMath
from ..core import BACKWARD, FORWARD, Failure, VertexRunner, seed_gradient, total_gradient
from ..errors import InternalError
from ..graph import Node
from ..ops.base import derivative_is_async
from .mailbox import Mailbox
from .placement import Inline, OnStreams, OnWorker
from .plan import SOURCE_KINDS, ActorPlan, NetworkPlan
from .program import FEED, ActorProgram, Segment, compile_program


class Doing(enum.Enum):
    """What an actor is doing, for the diagnostics of a step that does not finish."""

    IDLE = "idle"
    FEED = "waits for its feed"
    INPUT = "waits for an input"
    RUNNING = "runs its op"
    DERIVATIVE = "runs its derivative"
    GRADIENT = "waits for a gradient"


@dataclass
class ActorStatus:
    """Where one actor is: its step, the vertex it is at, what it does there, and which input or edge."""

    step: int = -1
    vertex: Node | None = None
    doing: Doing = Doing.IDLE
    detail: int = 0  # the input position (INPUT) or the edge-gradient index (GRADIENT)

    def at(self, step: int, vertex: Node | None, doing: Doing, detail: int = 0) -> None:
        self.step, self.vertex, self.doing, self.detail = step, vertex, doing, detail

    def running(self, vertex: Node) -> None:
        """Its inputs came and it runs `vertex` (said from the thread that runs it)."""
        self.vertex, self.doing = vertex, Doing.RUNNING


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
            await self._run_actor(program)
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

    def _deliver(self, step: int, phase: str, key: int, value) -> None:
        """File a fetched value or a wrt gradient under its step; wake the step's waiter when complete."""
        state = self.steps.get(step)
        if state is None:
            raise InternalError(f"{phase} result for unknown step {step}")
        if type(value) is Failure and state.error is None:
            state.error = value.error
        (state.values if phase == FORWARD else state.grads)[key] = value
        if state.received() == state.expected:
            if self.streams is not None:
                # The fetches are complete: now, and only now, the host waits for the kernels.
                self.streams.step_done(state.slot, state.trace)
            self.free_slots.append(state.slot)
            if state.trace is not None:
                if state.sliced:
                    state.trace.slice(state.submitted, time.perf_counter())
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
        on_done, state.on_done = state.on_done, None  # the state goes to the caller: no cycle back to it
        if on_done is not None or state.discarded:
            self.steps.pop(step, None)
        if on_done is not None and not state.discarded:
            on_done(state)

    # -- diagnostics ---------------------------------------------------------------
    def waiting(self, step: int) -> dict[str, str]:
        """{vertex: what it waits for} for the actors not yet done with `step`."""
        return waiting(self.plan, self.status, step)

    # -- actors ------------------------------------------------------------------
    def _state(self, step: int) -> StepState:
        state = self.steps.get(step)
        if state is None:
            raise InternalError(f"an actor reached step {step}, which the driver never submitted")
        return state

    async def _run_actor(self, program: ActorProgram) -> None:
        np.seterr(all="ignore")  # this task's numpy error state; numerics are checked by check_numerics
        actor = program.actor
        status = self.status[actor.index]
        mailbox = self.mailboxes[actor.index]
        placement = self.placements[actor.index]
        mailboxes = self.mailboxes
        backward = self.plan.reverse is not None and bool(actor.backward)
        segments = program.segments
        step = 0
        while True:
            values: dict[int, Any] = {}
            state: StepState | None = None
            at = 0
            while at < len(segments):
                segment = segments[at]
                at += 1
                if segment.on_worker and type(placement) is OnWorker and not segment.awaits and segment.entries:
                    state = state or self.steps.get(step)
                    if state is not None:  # the step has begun: its worker segments start from the mailbox
                        at += await self._on_worker(program, at, step, values, state, status) - 1
                        continue
                for take in segment.takes:
                    if mailbox.has(step, FORWARD, take.key):
                        values[take.key] = await mailbox.take(step, FORWARD, take.key)
                        continue
                    doing = Doing.FEED if take.position == FEED else Doing.INPUT
                    status.at(step, take.member, doing, take.position)
                    waiting_on = self.steps.get(step) if doing is Doing.INPUT else None
                    asked = time.perf_counter()
                    values[take.key] = await mailbox.take(step, FORWARD, take.key)
                    if waiting_on is not None and waiting_on.trace is not None:  # an actor waiting in its inbox
                        waiting_on.trace.wait("input", take.member.name, None, asked, time.perf_counter())
                if not segment.entries:
                    continue
                if state is None:
                    state = self._state(step)
                status.at(step, segment.entries[0].member, Doing.RUNNING)
                if segment.on_worker and type(placement) is OnWorker and not segment.awaits:
                    at += await self._on_worker(program, at, step, values, state, status, taken=True) - 1
                    continue
                await placement.run(segment, values, state, status)
                last = segment.last
                if last.readers:
                    value = values[last.member.id]
                    for reader in last.readers:
                        mailboxes[reader].post(step, FORWARD, {last.member.id: value})
                if last.fetched:
                    self._deliver(step, FORWARD, last.member.id, values[last.member.id])
            if backward:
                await self._backward(actor, status, mailbox, step, values, state or self._state(step))
            status.at(step, None, Doing.IDLE)
            step += 1

    async def _on_worker(self, program: ActorProgram, at: int, step: int, values: dict, state: StepState,
                         status: ActorStatus, taken: bool = False) -> int:
        """Run program.segments[at - 1] on a worker, which sends its value on itself and may go on to the next
        segments; its inputs taken already, or (not `taken`) started by whichever thread posts the last of
        them. Files the fetched values; returns how many segments ran."""
        segment = program.segments[at - 1]
        placement = self.placements[program.actor.index]
        ran: list[tuple | None] = []
        onward = self._onward(program, at, step, values, state, status, ran)
        mailbox = self.mailboxes[program.actor.index]
        inputs = None if taken else mailbox.take_ready(step, FORWARD, segment.keys)
        if taken or inputs is not None:
            values.update(inputs or {})
            status.at(step, segment.entries[0].member, Doing.RUNNING)
            await placement.run(segment, values, state, status, onward)
        else:
            take = next(t for t in segment.takes if not mailbox.has(step, FORWARD, t.key))
            status.at(step, take.member, Doing.FEED if take.position == FEED else Doing.INPUT, take.position)
            asked = time.perf_counter()
            came = await placement.run_when_in(segment, values, state, status, onward, mailbox, step)
            if state.trace is not None and take.position != FEED:  # the actor waited for its inputs
                state.trace.wait("input", take.member.name, None, asked, came)
        for fetched in ran:
            if fetched is not None:
                self._deliver(step, FORWARD, *fetched)
        return len(ran)

    def _onward(self, program: ActorProgram, at: int, step: int, values: dict, state: StepState,
                status: ActorStatus, ran: list):
        """What a worker does after each of this actor's segments (program.segments[at - 1] first): send its
        value to its readers, and take on the next segment if it runs on a worker too, its inputs are all in
        and no queued call comes before it. `ran` gets an item per segment done: its fetched (key, value)
        for the actor to file, or None."""
        segments = program.segments
        mailboxes, token = self.mailboxes, self.token
        mailbox = mailboxes[program.actor.index]
        pool = self.placements[program.actor.index].pool

        def onward(segment: Segment) -> Segment | None:
            last = segment.last
            if last.readers:
                value = values[last.member.id]
                for reader in last.readers:
                    mailboxes[reader].post_from_thread(step, FORWARD, {last.member.id: value}, token)
            ran.append((last.member.id, values[last.member.id]) if last.fetched else None)
            following = at + len(ran) - 1
            if following >= len(segments) or self.broken is not None:
                return None
            nxt = segments[following]
            if not (nxt.on_worker and nxt.entries) or nxt.awaits:
                return None
            if not pool.first_in_line(OnWorker.priority(nxt, state)):
                return None
            inputs = mailbox.take_ready(step, FORWARD, nxt.keys)
            if inputs is None:
                return None
            values.update(inputs)
            return nxt

        return onward

    async def _backward(self, actor: ActorPlan, status: ActorStatus, mailbox: Mailbox, step: int, values: dict,
                        state: StepState) -> None:
        reverse = self.plan.reverse
        if self.streams is not None:
            # Derivative kernels run on the current stream: let this step's forward finish first.
            self.streams.runtime.synchronize()
        edges: dict[int, Any] = {}
        add = ArrayMath(self.xp).add
        mailboxes = self.mailboxes
        for node in actor.backward:
            parts = []
            for edge in reverse.incoming[node.id]:
                if edge == 0:
                    parts.append(seed_gradient(self.xp, values[node.id]))
                elif edge in actor.grad_from:
                    if mailbox.has(step, BACKWARD, edge):
                        parts.append(await mailbox.take(step, BACKWARD, edge))
                        continue
                    status.at(step, node, Doing.GRADIENT, edge)
                    asked = time.perf_counter()
                    parts.append(await mailbox.take(step, BACKWARD, edge))
                    if state.trace is not None:
                        state.trace.wait("gradient", f"{node.name} (backward)", None, asked, time.perf_counter())
                else:
                    parts.append(edges.pop(edge, None))
            total = total_gradient(add, parts)
            del parts
            if node.id in self.wrt_ids:
                self._deliver(step, BACKWARD, node.id, total)
            if node.kind != "op":
                continue
            status.at(step, node, Doing.DERIVATIVE)
            placement = self.placements[actor.index] if node.id in actor.heavy_ids else self.inline
            if self.streams is not None and not derivative_is_async(node.op):
                placement = self.streams
            sent = await placement.backward(reverse, node, total, lambda n: values[n.id], state)
            for edge, gi in sent:
                target = actor.grad_to.get(edge)
                if target is None:
                    edges[edge] = gi
                else:
                    mailboxes[target].post(step, BACKWARD, {edge: gi})


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
