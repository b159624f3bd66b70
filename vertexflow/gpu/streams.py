"""Stream planning: which CUDA stream runs each vertex, and the events between streams.

Pure Python, independent of cupy, so it is tested on any machine.

Plan: decompose the vertices into chains along the longest paths (a vertex
continues the chain of the producer with the longest way still ahead of it,
if that chain has not continued elsewhere); then give each chain a stream:
one already used only by chains that are all upstream of it (so sharing
loses no parallelism), else the least loaded of at most `streams` streams.
A chain never hops streams; independent branches land on different streams
while there are streams to go round. Every edge between vertices on
different streams gets an event: recorded on the producer's stream right
after the producer, waited for on the consumer's stream right before the
consumer. Ties are broken by vertex id, so the plan is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..graph import Node, ancestors


@dataclass
class StreamPlan:
    """Attributes:
    order: the op vertices in topological order (the launch order).
    stream: {vertex id: stream index}.
    chains: the chains, each a list of vertices in order, by first vertex.
    record: {producer id: event index} for producers some other stream waits on.
    waits: {consumer id: event indices to wait for before it runs}.
    streams: how many streams the plan uses.
    """

    order: list[Node]
    stream: dict[int, int]
    chains: list[list[Node]]
    record: dict[int, int] = field(default_factory=dict)
    waits: dict[int, list[int]] = field(default_factory=dict)
    streams: int = 1

    def cross_edges(self) -> list[tuple[Node, Node]]:
        """Edges (producer, consumer) between op vertices on different streams."""
        return [
            (p, v) for v in self.order for p in v.inputs
            if p.kind == "op" and self.stream[p.id] != self.stream[v.id]
        ]


def plan_streams(fetch: Sequence[Node], streams: int = 4) -> StreamPlan:
    """The stream plan for the op vertices `fetch` needs, on at most `streams` streams."""
    if streams < 1:
        raise ValueError("streams must be >= 1")
    order = [n for n in ancestors(list(fetch)) if n.kind == "op"]
    ids = {n.id for n in order}
    consumers: dict[int, list[Node]] = {n.id: [] for n in order}
    for v in order:
        for p in v.inputs:
            if p.id in ids and all(c is not v for c in consumers[p.id]):
                consumers[p.id].append(v)
    # Height: vertices on the longest way from here to a sink.
    height: dict[int, int] = {}
    for v in reversed(order):
        height[v.id] = 1 + max((height[c.id] for c in consumers[v.id]), default=0)

    chain_of: dict[int, int] = {}
    chains: list[list[Node]] = []
    for v in order:
        producers = sorted({p.id: p for p in v.inputs if p.id in ids}.values(), key=lambda p: (-height[p.id], p.id))
        for p in producers:
            chain = chains[chain_of[p.id]]
            if chain[-1] is p:  # that chain ends at p: continue it
                chain.append(v)
                chain_of[v.id] = chain_of[p.id]
                break
        else:
            chain_of[v.id] = len(chains)
            chains.append([v])

    # Bit sets of what each vertex depends on, to know when sharing a stream costs nothing.
    depends: dict[int, int] = {}
    bit = {v.id: i for i, v in enumerate(order)}
    for v in order:
        mask = 0
        for p in v.inputs:
            if p.id in ids:
                mask |= depends[p.id] | (1 << bit[p.id])
        depends[v.id] = mask
    stream_of_chain: list[int] = []
    members: list[int] = []  # per stream: bit set of its vertices
    load: list[int] = []
    for chain in chains:
        head = chain[0]
        choice = None
        for s in range(len(members)):
            if members[s] & ~depends[head.id] == 0:  # everything on s is upstream of this chain
                choice = s
                break
        if choice is None:
            if len(members) < streams:
                choice = len(members)
                members.append(0)
                load.append(0)
            else:
                choice = min(range(len(members)), key=lambda s: (load[s], s))
        stream_of_chain.append(choice)
        for v in chain:
            members[choice] |= 1 << bit[v.id]
        load[choice] += len(chain)
    stream = {v.id: stream_of_chain[chain_of[v.id]] for v in order}

    plan = StreamPlan(order, stream, chains, streams=max(len(members), 1))
    for p, v in plan.cross_edges():
        event = plan.record.setdefault(p.id, len(plan.record))
        waits = plan.waits.setdefault(v.id, [])
        if event not in waits:
            waits.append(event)
    return plan
