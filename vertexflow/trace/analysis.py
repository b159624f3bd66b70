"""What a trace says: busy time per lane, parallelism, the critical path and the ideal bound.

The critical path is the longest chain of dependent spans, weighted by their
durations: forward spans depend on the spans of their inputs; a backward span
depends on its vertex's forward span and on the backward spans of its
consumers. The ideal bound of a run is max(critical path, total work / lanes):
no schedule on that many lanes can beat it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tracer calls into this module; it needs it only for hints
    from .tracer import Span, Tracer


@dataclass
class Summary:
    wall: float
    busy: dict[str, float]
    utilization: dict[str, float]
    parallelism: float
    total_work: float
    critical_path: float
    critical_spans: list[tuple[str, str]]  # (vertex, phase) along the critical path
    ideal: float
    lanes: int
    top_ops: list[tuple[str, float, int]]  # (op, total seconds, spans)
    steps: int

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "wall_s": self.wall,
            "busy_s": self.busy,
            "utilization": self.utilization,
            "parallelism": self.parallelism,
            "total_work_s": self.total_work,
            "critical_path_s": self.critical_path,
            "critical_path": [list(x) for x in self.critical_spans],
            "ideal_s": self.ideal,
            "lanes": self.lanes,
            "efficiency": self.efficiency,
            "top_ops": [{"op": op, "total_s": t, "spans": n} for op, t, n in self.top_ops],
            "steps": self.steps,
        }


def vertex_times(spans: list[Span]) -> dict[tuple[str, str], float]:
    """Median duration of each (vertex, phase) over the steps traced."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in spans:
        times[(s.vertex, s.phase)].append(s.duration)
    return {k: statistics.median(v) for k, v in times.items()}


def dependencies(spans: list[Span]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(vertex, phase) -> the (vertex, phase) spans it waits for."""
    present = {(s.vertex, s.phase) for s in spans}
    inputs: dict[str, tuple[str, ...]] = {}
    for s in spans:
        if s.phase == "forward":
            inputs[s.vertex] = s.inputs
    deps: dict[tuple[str, str], set[tuple[str, str]]] = {k: set() for k in present}
    for vertex, ins in inputs.items():
        for i in ins:
            if (i, "forward") in present:
                deps[(vertex, "forward")].add((i, "forward"))
            if (i, "backward") in present and (vertex, "backward") in present:
                deps[(i, "backward")].add((vertex, "backward"))
    for vertex, phase in present:
        if phase == "backward" and (vertex, "forward") in present:
            deps[(vertex, "backward")].add((vertex, "forward"))
    return deps


def critical_path(times: dict, deps: dict) -> tuple[float, list]:
    """Longest weighted path through the dependency DAG."""
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(times)
    for node, before in deps.items():
        for b in before:
            dag.add_edge(b, node)
    finish: dict = {}
    best: dict = {}
    for node in nx.topological_sort(dag):
        preds = list(dag.predecessors(node))
        prev = max(preds, key=lambda p: finish[p], default=None)
        finish[node] = times.get(node, 0.0) + (finish[prev] if prev is not None else 0.0)
        best[node] = prev
    if not finish:
        return 0.0, []
    end = max(finish, key=finish.get)
    path = []
    while end is not None:
        path.append(end)
        end = best[end]
    return max(finish.values()), path[::-1]


def summarize(tracer: Tracer, cores: int | None = None) -> Summary:
    """Summary of every span in the tracer.

    Args:
        cores: lanes for the ideal bound; default the lanes the trace used.
    """
    spans = tracer.spans
    if not spans:
        return Summary(0.0, {}, {}, 0.0, 0.0, 0.0, [], 0.0, cores or 1, [], 0)
    begin = min(min(s.ready, s.start) for s in spans)
    wall = max(s.end for s in spans) - begin
    busy: dict[str, float] = defaultdict(float)
    ops: dict[str, list[float]] = defaultdict(list)
    for s in spans:
        busy[s.lane] += s.duration
        ops[s.op].append(s.duration)
    total = sum(busy.values())
    steps = len({s.step for s in spans})
    times = vertex_times(spans)
    path_len, path = critical_path(times, dependencies(spans))
    lanes = cores or len(busy)
    per_step_work = total / max(steps, 1)
    ideal_step = max(path_len, per_step_work / lanes)
    return Summary(
        wall=wall,
        busy=dict(busy),
        utilization={lane: b / wall if wall else 0.0 for lane, b in busy.items()},
        parallelism=total / wall if wall else 0.0,
        total_work=total,
        critical_path=path_len,
        critical_spans=path,
        ideal=ideal_step * steps,
        lanes=lanes,
        top_ops=sorted(((op, sum(v), len(v)) for op, v in ops.items()), key=lambda x: -x[1])[:10],
        steps=steps,
    )
