"""Partition a graph into actors, and describe how their messages travel.

Pure planning, no trio: which vertices each actor owns, in which order it
runs them, which actors send it values (forward) and gradients (backward),
and where sources (inputs, params, constants) come from.

Partition rule (DESIGN decision 5): a vertex whose estimated cost reaches
`heavy_flops` is an actor of its own, so independent expensive vertices can
run at once on worker threads. Cheap vertices are fused: one joins an actor
that already waits for everything it needs (its producers are members of that
actor, sources, or inputs the actor already receives), so fusing never makes
an actor wait longer. Every actor runs its members in the graph's global
topological order and waits for each outside value just before the member
that reads it; with sends that never block, that order makes the network
deadlock-free whatever the partition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..autodiff.reverse import ReversePlan
from ..graph import Node, Spec, ancestors

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
        heavy: True for an actor holding one expensive vertex.
    """

    index: int
    members: list[Node] = field(default_factory=list)
    sources: list[Node] = field(default_factory=list)
    value_from: dict[int, int] = field(default_factory=dict)
    value_to: dict[int, list[int]] = field(default_factory=dict)
    backward: list[Node] = field(default_factory=list)
    grad_from: dict[int, int] = field(default_factory=dict)
    grad_to: dict[int, int] = field(default_factory=dict)
    heavy: bool = False

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

    def describe(self) -> str:
        lines = []
        for a in self.actors:
            kind = "heavy" if a.heavy else "fused" if len(a.members) > 1 else "light"
            names = ", ".join(m.name for m in a.members)
            lines.append(f"actor {a.index:>3} [{kind}] {names}")
        return "\n".join(lines)


def concrete_specs(order: Sequence[Node], source_shapes: Mapping[int, tuple]) -> dict[int, Spec]:
    """Specs with the run's actual sizes, inferred from the first feed's shapes (for costs)."""
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
) -> NetworkPlan:
    """Partition the vertices that `fetch` (and the reverse plan) need into actors."""
    targets = list(fetch) + ([reverse.output] if reverse is not None else [])
    order = ancestors(targets)
    specs = concrete_specs(order, source_shapes)
    actors: list[ActorPlan] = []
    actor_of: dict[int, int] = {}
    # Bit sets of vertex ids: what each vertex depends on, and what each actor waits for from outside.
    depends: dict[int, int] = {}
    waits: list[int] = []

    def new_actor(heavy: bool) -> ActorPlan:
        actor = ActorPlan(index=len(actors), heavy=heavy)
        actors.append(actor)
        waits.append(0)
        return actor

    ops = [n for n in order if n.kind == "op"]
    consumers: dict[int, list[Node]] = {}
    for node in order:
        mask = 0
        for inp in node.inputs:
            mask |= depends[inp.id] | (1 << inp.id)
            consumers.setdefault(inp.id, []).append(node)
        depends[node.id] = mask

    for node in ops:
        cost = node.op.cost(*(specs[i.id] for i in node.inputs))
        if cost >= heavy_flops:
            actor = new_actor(heavy=True)
        else:
            actor = _fusable_actor(node, actors, actor_of, waits, depends[node.id]) or new_actor(heavy=False)
        actor.members.append(node)
        actor_of[node.id] = actor.index
        for inp in node.inputs:
            if inp.kind not in SOURCE_KINDS and actor_of[inp.id] != actor.index:
                waits[actor.index] |= 1 << inp.id

    # A source lives in the actor of its first consumer; a fetched source with no consumer gets its own.
    for node in order:
        if node.kind in SOURCE_KINDS:
            users = consumers.get(node.id)
            actor = actors[actor_of[users[0].id]] if users else new_actor(heavy=False)
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
            for inp in member.inputs:
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
    return NetworkPlan(list(fetch), reverse, actors, actor_of, heavy_flops)


def _fusable_actor(node: Node, actors: list[ActorPlan], actor_of: dict[int, int], waits: list[int], depends: int):
    """A light actor that `node` can join without waiting for anything it does not depend on anyway.

    Joining actor A puts `node` after A's members, so it runs once everything A
    waits for has arrived; that delays nothing when all of it is upstream of `node`.
    Actors holding one of node's producers come first (chains fuse).
    """
    preferred = [actor_of[i.id] for i in node.inputs if i.kind not in SOURCE_KINDS]
    for index in dict.fromkeys(preferred + list(range(len(actors)))):
        if not actors[index].heavy and waits[index] & ~depends == 0:
            return actors[index]
    return None
