"""Partition a graph into actors, and describe how their messages travel.

Pure planning, no trio: which vertices each actor owns, in which order it
runs them, which actors send it values (forward) and gradients (backward),
and where sources (inputs, params, constants) come from.

Partition rule: a vertex joins an existing actor when that
delays nothing: everything the actor waits for from outside, and every
expensive member it has, is upstream of the vertex anyway. Otherwise it
starts a new actor. So chains fuse into one actor (cheap and expensive alike:
a chain has no parallel work to lose, unless the network pipelines a stream:
then each expensive vertex is a stage of its own), cheap vertices gather into few actors,
and independent expensive branches land in different actors that run at once
on worker threads. A vertex that may wait (a `blocking` op, or an async one)
counts as expensive whatever its cost, and joins no actor that already holds
expensive work: it is an actor of its own, so nothing waits behind it. Every actor runs its members in the graph's global
topological order and waits for each outside value just before the member
that reads it; with sends that never block, that order makes the network
deadlock-free whatever the partition.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..autodiff.reverse import ReversePlan
from ..graph import Node, Spec, ancestors
from ..ops.base import is_async
from ..ops.base import waits as op_waits

SOURCE_KINDS = ("input", "param", "const")


@dataclass
class ActorPlan:
    """One actor: its members and its links to other actors.

    Attributes:
        index: position in NetworkPlan.actors.
        members: vertices it computes, in topological order (sources it owns included).
        sources: source vertices whose values it receives from the step driver.
        value_from: {vertex id: actor index} for each outside value it reads.
        value_to: {member vertex id: sorted actor indices} that read a member's value.
        backward: members that take part in the reverse sweep, output side first.
        grad_from: {edge-gradient index: actor index} for gradients sent to its members from outside.
        grad_to: {edge-gradient index: actor index} for gradients its members send outside.
        heavy_ids: ids of its expensive members (costs at least `heavy_flops`).
    """

    index: int
    members: list[Node] = field(default_factory=list)
    sources: list[Node] = field(default_factory=list)
    value_from: dict[int, int] = field(default_factory=dict)
    value_to: dict[int, list[int]] = field(default_factory=dict)
    backward: list[Node] = field(default_factory=list)
    grad_from: dict[int, int] = field(default_factory=dict)
    grad_to: dict[int, int] = field(default_factory=dict)
    heavy_ids: set[int] = field(default_factory=set)

    @property
    def heavy(self) -> bool:
        """Whether it holds expensive vertices, which run on worker threads."""
        return bool(self.heavy_ids)

    @property
    def name(self) -> str:
        ops = [m for m in self.members if m.kind == "op"]
        head = (ops or self.members)[0].name
        return head if len(self.members) == 1 else f"{head}+{len(self.members) - 1}"

    def senders(self) -> set[int]:
        """Actors that send this one anything."""
        return set(self.value_from.values()) | set(self.grad_from.values())


@dataclass
class NetworkPlan:
    fetch: list[Node]
    reverse: ReversePlan | None
    actors: list[ActorPlan]
    actor_of: dict[int, int]  # vertex id -> actor index (sources: the actor that owns them)
    heavy_flops: float
    fusion: Any = None  # a fusion.FusionPlan: groups run as one, their inner vertices not at all

    def inputs_of(self, node: Node) -> tuple[Node, ...]:
        """What a vertex reads here: a fused group's root reads the group's outer inputs."""
        fused = self.fusion.ops.get(node.id) if self.fusion is not None else None
        return fused.group.inputs if fused is not None else node.inputs

    def op_of(self, node: Node):
        """What runs for a vertex: its op, or the fused op of the group it ends."""
        fused = self.fusion.ops.get(node.id) if self.fusion is not None else None
        return fused if fused is not None else node.op

    @functools.cached_property
    def heavy_width(self) -> int:
        """How many expensive vertices can run at once: the most at one depth of the heavy DAG."""
        members = sorted(
            ((m, m.id in a.heavy_ids) for a in self.actors for m in a.members if m.kind == "op"),
            key=lambda t: t[0].id,
        )
        depth: dict[int, int] = {}
        per_level: dict[int, int] = {}
        for member, heavy in members:
            d = max((depth.get(i.id, 0) for i in self.inputs_of(member)), default=0)
            if heavy:
                d += 1
                per_level[d] = per_level.get(d, 0) + 1
            depth[member.id] = d
        return max(per_level.values(), default=0)

    @functools.cached_property
    def heavy_count(self) -> int:
        """Actors holding expensive vertices."""
        return sum(1 for a in self.actors if a.heavy)

    def describe(self) -> str:
        lines = []
        for a in self.actors:
            kind = "heavy" if a.heavy else "fused" if len(a.members) > 1 else "light"
            kind += f" {len(a.heavy_ids)} expensive" if len(a.heavy_ids) > 1 else ""
            waiting = [m for m in a.members if m.kind == "op" and op_waits(m.op)]
            if waiting:
                kind += ", awaits (no thread held)" if any(is_async(m.op) for m in waiting) else \
                    ", blocks (a worker of its own)"
            names = ", ".join(m.name for m in a.members)
            lines.append(f"actor {a.index:>3} [{kind}] {names}")
        return "\n".join(lines)


def cost_specs(order: Sequence[Node], source_shapes: Mapping[int, tuple]) -> dict[int, Spec]:
    """Specs with the run's actual sizes, inferred from the first feed's shapes, for cost estimates only
    (lenient: a vertex whose shape rule refuses them keeps its static spec; feeds were checked before)."""
    specs: dict[int, Spec] = {}
    for node in order:
        if node.kind == "op":
            try:
                specs[node.id] = node.op.infer(*(specs[i.id] for i in node.inputs))
            except Exception:
                specs[node.id] = node.spec  # fall back to the static spec
        else:
            shape = source_shapes.get(node.id, node.shape)
            specs[node.id] = Spec(tuple(1 if d is None else d for d in shape), node.dtype)
    return specs


def plan_network(
    fetch: Sequence[Node],
    reverse: ReversePlan | None,
    source_shapes: Mapping[int, tuple],
    heavy_flops: float,
    pipeline: bool = False,
    costs: Mapping[int, float] | None = None,
    fusion=None,
) -> NetworkPlan:
    """Partition the vertices that `fetch` (and the reverse plan) need into actors.

    Args:
        heavy_flops: the cost from which a vertex is expensive (about a nanosecond per unit).
        pipeline: the network will carry several steps at once (a stream), so
            expensive vertices stay separate stages rather than fusing in chains.
        costs: measured seconds per vertex id (forward and backward), used instead
            of the ops' own estimates where given.
        fusion: a fusion.FusionPlan; its groups' inner vertices are left out, and each
            root reads its group's outer inputs.
    """
    targets = list(fetch) + ([reverse.output] if reverse is not None else [])
    order = ancestors(targets)
    specs = cost_specs(order, source_shapes)
    shell = NetworkPlan(list(fetch), reverse, [], {}, heavy_flops, fusion)
    inputs_of = shell.inputs_of
    if fusion is not None:
        order = [n for n in order if n.id not in fusion.skipped]
    actors: list[ActorPlan] = []
    actor_of: dict[int, int] = {}
    # Bit sets of vertex ids: what each vertex depends on, and what each actor waits for from outside.
    depends: dict[int, int] = {}
    waits: list[int] = []

    def new_actor() -> ActorPlan:
        actor = ActorPlan(index=len(actors))
        actors.append(actor)
        waits.append(0)
        expensive.append(0)
        return actor

    expensive: list[int] = []  # per actor: bit set of its expensive members
    ops = [n for n in order if n.kind == "op"]
    consumers: dict[int, list[Node]] = {}
    for node in order:
        mask = 0
        for inp in inputs_of(node):
            mask |= depends[inp.id] | (1 << inp.id)
            consumers.setdefault(inp.id, []).append(node)
        depends[node.id] = mask

    for node in ops:
        waiting = op_waits(node.op)
        if waiting:
            heavy = True  # an actor of its own whatever its cost: it may wait, and others must not wait with it
        elif costs is not None and node.id in costs:
            heavy = costs[node.id] * 1e9 >= heavy_flops
        else:
            heavy = shell.op_of(node).cost(*(specs[i.id] for i in inputs_of(node))) >= heavy_flops
        index = _fusable_actor(node, inputs_of(node), actor_of, waits, expensive, depends[node.id],
                               heavy and (pipeline or waiting))
        actor = new_actor() if index is None else actors[index]
        actor.members.append(node)
        actor_of[node.id] = actor.index
        if heavy:
            actor.heavy_ids.add(node.id)
            expensive[actor.index] |= 1 << node.id
        for inp in inputs_of(node):
            if inp.kind not in SOURCE_KINDS and actor_of[inp.id] != actor.index:
                waits[actor.index] |= 1 << inp.id

    # A source lives in the actor of its first consumer; a fetched source with no consumer gets its own.
    for node in order:
        if node.kind in SOURCE_KINDS:
            users = consumers.get(node.id)
            actor = actors[actor_of[users[0].id]] if users else new_actor()
            actor_of[node.id] = actor.index
            actor.members.append(node)
    for actor in actors:
        actor.members.sort(key=lambda n: n.id)

    # Forward links: who reads what.
    for actor in actors:
        sources: dict[int, Node] = {}
        for member in actor.members:
            if member.kind in SOURCE_KINDS:
                sources[member.id] = member
                continue
            for inp in inputs_of(member):
                if inp.kind in SOURCE_KINDS:
                    sources[inp.id] = inp
                elif actor_of[inp.id] != actor.index:
                    actor.value_from[inp.id] = actor_of[inp.id]
                    readers = actors[actor_of[inp.id]].value_to.setdefault(inp.id, [])
                    if actor.index not in readers:
                        readers.append(actor.index)
        actor.sources = [sources[k] for k in sorted(sources)]
    for actor in actors:
        for readers in actor.value_to.values():
            readers.sort()

    # Backward links: each edge gradient travels from its consumer's actor to its producer's.
    if reverse is not None:
        for node in reverse.order:
            actors[actor_of[node.id]].backward.append(node)
        for edge, (consumer, pos) in enumerate(reverse.senders):
            if consumer is None:
                continue
            producer = consumer.inputs[pos]
            src, dst = actor_of[consumer.id], actor_of[producer.id]
            if src != dst:
                actors[src].grad_to[edge] = dst
                actors[dst].grad_from[edge] = src
    return NetworkPlan(list(fetch), reverse, actors, actor_of, heavy_flops, fusion)


def plan_for(fetch: Sequence[Node], reverse: ReversePlan | None, source_shapes: Mapping[int, tuple],
             heavy_flops: float, threads: int, depth: int, stream: bool,
             costs: Mapping[int, float] | None = None, fusion=None) -> NetworkPlan:
    """The plan a network runs: stages of a pipeline for a stream with too few parallel branches.

    A stream (several steps in flight) whose expensive vertices cannot keep the
    workers busy side by side gains from overlapping steps along its chains
    instead, so each expensive vertex becomes a stage of its own.
    """
    plan = plan_network(fetch, reverse, source_shapes, heavy_flops, costs=costs, fusion=fusion)
    if stream and depth > 1 and plan.heavy_width < threads:
        plan = plan_network(fetch, reverse, source_shapes, heavy_flops, pipeline=True, costs=costs, fusion=fusion)
    return plan


def _fusable_actor(
    node: Node, inputs: Sequence[Node], actor_of: dict[int, int], waits: list[int], expensive: list[int],
    depends: int, stage: bool
) -> int | None:
    """The index of an actor that `node` can join without being held up by anything it does not depend on.

    Joining actor A puts `node` after A's members: it then runs once A has
    everything it waits for, and once A's expensive members are done. Neither
    delays it when all of that is upstream of `node`. Actors holding one of
    node's producers are tried first, so chains fuse. With `stage` (an
    expensive vertex in a pipelined network) it joins no actor that already
    holds expensive work, so steps can overlap along the chain.
    """
    preferred = [actor_of[i.id] for i in inputs if i.kind not in SOURCE_KINDS]
    for index in dict.fromkeys(preferred + list(range(len(waits)))):
        if stage and expensive[index]:
            continue  # a pipeline keeps each expensive vertex a stage of its own
        if (waits[index] | expensive[index]) & ~depends == 0:
            return index
    return None
