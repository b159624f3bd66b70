"""One actor: the trio task that walks its program, step after step, forward and then back.

Forward, for each segment of its program (`program.py`): take the values it
reads from the mailbox, have it computed where the placement says, send its
last value to the actors that read it, file a fetched value under its step.
A segment on a worker is queued by whichever thread posts its last input,
and the worker that runs it sends its value on itself and may take on the
actor's next segment (`_onward`): the task only learns what ran. Backward,
it walks its members from the output side: sums the edge gradients their
consumers sent, applies the derivative rule where the placement says, and
sends one edge gradient per input to the actor that owns it. `ActorStatus`
says where it is, for the diagnostics of a step that does not finish.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..autodiff.namespace import ArrayMath
from ..core import BACKWARD, FORWARD, seed_gradient, total_gradient
from ..graph import Node
from ..ops.base import derivative_is_async
from .placement import OnWorker
from .program import FEED, ActorProgram, Segment

if TYPE_CHECKING:
    from .network import Network, StepState


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


class Actor:
    """The task of one actor of `network`, running `program`."""

    def __init__(self, network: Network, program: ActorProgram):
        self.network = network
        self.program = program
        self.plan = program.actor
        index = program.actor.index
        self.status = network.status[index]
        self.mailbox = network.mailboxes[index]
        self.placement = network.placements[index]

    async def run(self) -> None:
        np.seterr(all="ignore")  # this task's numpy error state; numerics are checked by check_numerics
        net, status, mailbox, placement = self.network, self.status, self.mailbox, self.placement
        on_workers = type(placement) is OnWorker
        backward = net.plan.reverse is not None and bool(self.plan.backward)
        segments = self.program.segments
        step = 0
        while True:
            values: dict[int, Any] = {}
            state: StepState | None = None
            at = 0
            while at < len(segments):
                segment = segments[at]
                at += 1
                worker = on_workers and segment.on_worker and not segment.awaits and bool(segment.entries)
                if worker:  # started from the mailbox by whichever thread posts its last input
                    ran, state = await self._on_worker(at, step, values, state or net.steps.get(step))
                    at += ran - 1
                    continue
                for take in segment.takes:
                    if mailbox.has(step, FORWARD, take.key):
                        values[take.key] = await mailbox.take(step, FORWARD, take.key)
                        continue
                    doing = Doing.FEED if take.position == FEED else Doing.INPUT
                    status.at(step, take.member, doing, take.position)
                    waiting_on = net.steps.get(step) if doing is Doing.INPUT else None
                    asked = time.perf_counter()
                    values[take.key] = await mailbox.take(step, FORWARD, take.key)
                    if waiting_on is not None and waiting_on.trace is not None:  # an actor waiting in its inbox
                        waiting_on.trace.wait("input", take.member.name, None, asked, time.perf_counter())
                if not segment.entries:
                    continue
                if state is None:
                    state = net.state(step)
                if worker:
                    ran, state = await self._on_worker(at, step, values, state, taken=True)
                    at += ran - 1
                    continue
                status.at(step, segment.entries[0].member, Doing.RUNNING)
                await placement.run(segment, values, state, status)
                last = segment.last
                if last.readers:
                    value = values[last.member.id]
                    for reader in last.readers:
                        net.mailboxes[reader].post(step, FORWARD, {last.member.id: value})
                if last.fetched:
                    net.deliver(step, FORWARD, last.member.id, values[last.member.id])
            if backward:
                await self._backward(step, values, state or net.state(step))
            status.at(step, None, Doing.IDLE)
            step += 1

    async def _on_worker(self, at: int, step: int, values: dict, state: StepState | None,
                         taken: bool = False) -> tuple[int, StepState]:
        """Run segments[at - 1] on a worker, which sends its value on itself and may go on to the next
        segments; its inputs taken already, or (not `taken`) started by whichever thread posts the last of
        them (the step driver itself, for a step not begun yet: `state` None). Returns how many segments
        ran, and the step's state."""
        segment = self.program.segments[at - 1]
        status, mailbox, steps = self.status, self.mailbox, self.network.steps
        known = [state]

        def state_of() -> StepState:  # the step's state, once it has begun (the worker asks)
            if known[0] is None:
                known[0] = steps[step]
            return known[0]

        ran: list[Segment] = []
        onward = self._onward(at, step, values, state_of, ran)
        inputs = None if taken or state is None else mailbox.take_ready(step, FORWARD, segment.keys)
        if taken or inputs is not None:
            values.update(inputs or {})
            status.at(step, segment.entries[0].member, Doing.RUNNING)
            await self.placement.run(segment, values, state, status, onward)
        else:
            take = next(t for t in segment.takes if not mailbox.has(step, FORWARD, t.key))
            status.at(step, take.member, Doing.FEED if take.position == FEED else Doing.INPUT, take.position)
            asked = time.perf_counter()
            came = await self.placement.run_when_in(segment, values, state_of, status, onward, mailbox, step)
            trace = state_of().trace
            if trace is not None and take.position != FEED:  # the actor waited for its inputs
                trace.wait("input", take.member.name, None, asked, came)
        return len(ran), state_of()

    def _onward(self, at: int, step: int, values: dict, state_of, ran: list):
        """What a worker does after each of this actor's segments (segments[at - 1] first): send its value to
        its readers (and file it under its step if it is fetched), and take on the next segment if it runs
        on a worker too, its inputs are all in and no queued call comes before it. `ran` gets each segment
        done."""
        net = self.network
        segments = self.program.segments
        mailboxes, token, mailbox, pool = net.mailboxes, net.token, self.mailbox, self.placement.pool

        def onward(segment: Segment) -> Segment | None:
            last = segment.last
            if last.readers:
                value = values[last.member.id]
                for reader in last.readers:
                    mailboxes[reader].post_from_thread(step, FORWARD, {last.member.id: value}, token)
            if last.fetched:
                net.deliver_from_thread(step, last.member.id, values[last.member.id])
            ran.append(segment)
            following = at + len(ran) - 1
            if following >= len(segments) or net.broken is not None:
                return None
            nxt = segments[following]
            if not (nxt.on_worker and nxt.entries) or nxt.awaits:
                return None
            if not pool.first_in_line(OnWorker.priority(nxt, state_of())):
                return None
            inputs = mailbox.take_ready(step, FORWARD, nxt.keys)
            if inputs is None:
                return None
            values.update(inputs)
            return nxt

        return onward

    async def _backward(self, step: int, values: dict, state: StepState) -> None:
        net, actor, status, mailbox = self.network, self.plan, self.status, self.mailbox
        reverse = net.plan.reverse
        if net.streams is not None:
            # Derivative kernels run on the current stream: let this step's forward finish first.
            net.streams.runtime.synchronize()
        edges: dict[int, Any] = {}
        add = ArrayMath(net.xp).add
        for node in actor.backward:
            parts = []
            for edge in reverse.incoming[node.id]:
                if edge == 0:
                    parts.append(seed_gradient(net.xp, values[node.id]))
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
            if node.id in net.wrt_ids:
                net.deliver(step, BACKWARD, node.id, total)
            if node.kind != "op":
                continue
            status.at(step, node, Doing.DERIVATIVE)
            placement = self.placement if node.id in actor.heavy_ids else net.inline
            if net.streams is not None and not derivative_is_async(node.op):
                placement = net.streams
            sent = await placement.backward(reverse, node, total, lambda n: values[n.id], state)
            for edge, gi in sent:
                target = actor.grad_to.get(edge)
                if target is None:
                    edges[edge] = gi
                else:
                    net.mailboxes[target].post(step, BACKWARD, {edge: gi})
