"""Cutting a graph into partitions: consecutive stages of balanced cost, cut where few bytes cross.

The vertices a call needs are laid out in one topological order that keeps
independent branches together (a depth-first walk from the fetches, each
input's whole sub-graph before the next input's), then split into `k`
contiguous segments whose measured (or estimated) costs are as equal as the
order allows; near each balanced cut point the cut that sends the fewest bytes
is taken. Contiguous segments of a topological order make partition numbers
follow the data: partition p only receives from partitions before it, so a
stream pipelines through them as stages, and two branches that land in two
partitions run side by side.

Sources (inputs, params, constants) belong to no stage: each partition that
reads one gets it directly (a feed through Ray's object store, a param copy
kept up to date), and a source's gradient is summed in its *home*, the first
partition that reads it (the last to run backward).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import GraphError
from ..graph import Node, Spec
from ..ops.base import numel


@dataclass
class Partitioning:
    """Which partition each vertex runs in, and what crosses between partitions.

    Attributes:
        parts: per partition, its op vertices in topological order.
        of: {op vertex id: partition}.
        home: {source id: the first partition that reads it}.
        readers: {vertex id: partitions (other than its own) that read it}.
        cut: [(producer, consumer partition)] values sent between partitions, in order.
    """

    parts: list[list[Node]]
    of: dict[int, int]
    home: dict[int, int]
    readers: dict[int, list[int]] = field(default_factory=dict)
    cut: list[tuple[Node, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.parts)


def nbytes(spec: Spec) -> int:
    """Bytes of a value of this spec (unknown sizes counted as 1)."""
    return int(numel(spec)) * spec.dtype.itemsize


def grouped_order(targets: Sequence[Node]) -> list[Node]:
    """The ops `targets` need in a topological order where each branch is contiguous (iterative DFS)."""
    order, done, stack = [], set(), [(t, False) for t in reversed(list(targets))]
    while stack:
        node, expanded = stack.pop()
        if node.id in done:
            continue
        if expanded:
            done.add(node.id)
            if node.kind == "op":
                order.append(node)
            continue
        stack.append((node, True))
        stack.extend((i, False) for i in reversed(node.inputs) if i.id not in done)
    return order


def _balanced_cuts(costs: Sequence[float], sizes: Sequence[float], k: int) -> list[int]:
    """k-1 cut positions (segment ends) over `costs`, balanced, each taking the fewest bytes nearby.

    Args:
        sizes: sizes[i] bytes crossing a cut placed after position i.
    """
    n = len(costs)
    if not sum(costs):
        costs = [1.0] * n
    total = sum(costs)
    prefix, running = [], 0.0
    for c in costs:
        running += c
        prefix.append(running)
    cuts, start = [], 0
    for j in range(1, k):
        target = total * j / k
        candidates = range(start, n - (k - j))  # leave at least one vertex to every later partition
        best = min(candidates, key=lambda i: abs(prefix[i] - target))
        slack = abs(prefix[best] - target) + 0.1 * total / k  # within 10% of a share, fewer bytes win
        cut = min((i for i in candidates if abs(prefix[i] - target) <= slack),
                  key=lambda i: (sizes[i], abs(prefix[i] - target)))
        cuts.append(cut)
        start = cut + 1
    return cuts


def partition(targets: Sequence[Node], k: int, costs: Mapping[int, float] | None = None,
              placement: Mapping[Node | str, int] | None = None) -> Partitioning:
    """Split the ops `targets` need into `k` partitions (see the module's docstring).

    Args:
        costs: {op id: seconds or flops}, measured; each op's own estimate where missing.
        placement: {vertex or name: partition} for vertices the user places; every other op
            goes with the earliest partition that reads it, but not before its inputs'.

    Raises:
        GraphError: fewer ops than partitions, a partition number out of range, or a placement
            that sends data backwards (a vertex in a partition before one of its inputs').
    """
    graph = targets[0].graph
    order = grouped_order(targets)
    if placement:
        return _placed(graph, order, k, placement)
    if k > len(order):
        raise GraphError(f"cannot cut {len(order)} vertices into {k} partitions; use partitions={max(len(order), 1)} "
                         "or fewer")
    cost = [float(costs[n.id]) if costs and n.id in costs else float(n.op.cost(*(i.spec for i in n.inputs)))
            for n in order]
    position = {n.id: i for i, n in enumerate(order)}
    last_reader: dict[int, int] = {}
    for i, n in enumerate(order):
        for inp in n.inputs:
            if inp.kind == "op":
                last_reader[inp.id] = max(last_reader.get(inp.id, -1), i)
    change = [0.0] * (len(order) + 1)  # bytes alive across a cut after position i, as a difference array
    for n in order:
        end = last_reader.get(n.id)
        if end is not None and end > position[n.id]:
            change[position[n.id]] += nbytes(n.spec)
            change[end] -= nbytes(n.spec)
    sizes, alive = [], 0.0
    for delta in change[:-1]:
        alive += delta
        sizes.append(alive)
    cuts = _balanced_cuts(cost, sizes, k)
    bounds = [0] + [c + 1 for c in cuts] + [len(order)]
    parts = [order[a:b] for a, b in zip(bounds, bounds[1:])]
    return _finish(parts)


def _placed(graph, order: list[Node], k: int, placement: Mapping[Node | str, int]) -> Partitioning:
    chosen: dict[int, int] = {}
    for item, p in placement.items():
        node = graph.resolve(item)
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < k:
            raise GraphError(f"placement of {node.name!r}: partition {p!r} is not one of 0..{k - 1}")
        chosen[node.id] = p
    # An op you did not place goes with the earliest partition among those that read it (so it runs
    # before them, beside the others), but never before its inputs' partitions.
    down: dict[int, int] = {}
    for n in reversed(order):
        if n.id in chosen:
            mark = chosen[n.id]
        else:
            mark = down.get(n.id)
        if mark is None:
            continue
        for i in n.inputs:
            if i.kind == "op":
                down[i.id] = min(down.get(i.id, mark), mark)
    of: dict[int, int] = {}
    for n in order:
        upstream = [of[i.id] for i in n.inputs if i.id in of]
        latest = max(upstream, default=0)
        p = chosen.get(n.id, max(latest, down.get(n.id, latest)))
        if p < latest:
            source = next(i for i in n.inputs if of.get(i.id) == latest)
            raise GraphError(f"placement puts {n.name!r} in partition {p} but its input {source.name!r} in partition "
                             f"{latest}: partition numbers must follow the data (a partition reads only earlier ones)")
        of[n.id] = p
    return _finish([[n for n in order if of[n.id] == p] for p in range(k)])  # a partition may run nothing here


def _finish(parts: list[list[Node]]) -> Partitioning:
    of = {n.id: p for p, members in enumerate(parts) for n in members}
    home: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    cut: list[tuple[Node, int]] = []
    for p, members in enumerate(parts):
        for n in members:
            for inp in n.inputs:
                if inp.kind != "op":
                    home[inp.id] = min(home.get(inp.id, p), p)
                elif of[inp.id] != p and p not in readers.setdefault(inp.id, []):
                    readers[inp.id].append(p)
                    cut.append((inp, p))
    return Partitioning(parts, of, home, readers, cut)


def cut_bytes(partitioning: Partitioning, specs: Mapping[int, Spec] | None = None) -> list[tuple[str, int, int, int]]:
    """[(vertex, from partition, to partition, bytes per step)] of every cut edge."""
    out = []
    for node, to in partitioning.cut:
        spec = specs.get(node.id, node.spec) if specs else node.spec
        out.append((node.name, partitioning.of[node.id], to, nbytes(spec)))
    return out


def describe(partitioning: Partitioning, specs: Mapping[int, Spec] | None = None, costs=None) -> str:
    lines = []
    for p, members in enumerate(partitioning.parts):
        work = ""
        if costs:
            work = f", {sum(costs.get(n.id, 0.0) for n in members) * 1e3:.2f} ms measured"
        names = ", ".join(n.name for n in members[:12]) + (f", ... ({len(members) - 12} more)" if len(members) > 12 else "")
        lines.append(f"partition {p}: {len(members)} vertices{work}: {names}")
    edges = cut_bytes(partitioning, specs)
    if edges:
        total = sum(b for *_, b in edges)
        lines.append(f"cut edges ({len(edges)}, {_size(total)} per step):")
        lines.extend(f"  {name}: partition {a} -> {b}, {_size(size)}" for name, a, b, size in edges)
    else:
        lines.append("cut edges: none")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


