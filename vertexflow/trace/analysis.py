"""What a trace says: work, waits, parallelism, the critical path of each step, and an honest bound.

All figures come from honest spans: a span's duration is the vertex's work
(waits are events of their own), and its CPU time is the time its thread
actually ran. For one executor's track (or every span):

- wall: the time some run was under way (each run from its first vertex
  ready to its last one done; the gaps between runs left out);
- work: the sum of span durations; CPU work: the sum of their threads' CPU
  time (no more than cores x wall, however many threads shared the cores);
- critical path: per step, the longest chain of dependent spans (forward
  spans on their inputs' spans, a backward span on its vertex's forward and
  on its consumers' backward spans), with the durations that step measured;
- ideal bound, per step: max(its critical path, its CPU work / cores), capped at
  its work: no schedule of these spans on these cores beats it. Efficiency is
  per step too: the median over steps of the step's bound over its wall time
  (the call's slice, from entry to return, where the executor recorded one),
  so the tape on a chain reads about 100%.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
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
    critical_spans: list[tuple[str, str]]  # (vertex, phase) along the longest step's critical path
    ideal: float
    lanes: int
    top_ops: list[tuple[str, float, int]]  # (op, total seconds, spans)
    steps: int
    cpu_work: float = 0.0
    cores: int = 1
    waits: dict[str, float] = field(default_factory=dict)  # kind -> total seconds
    critical_by_step: dict[tuple[int, int], list[tuple[str, str]]] = field(default_factory=dict)
    top_vertices: list[dict] = field(default_factory=list)
    step_wall: float = 0.0  # median per step: a call's slice (entry to return), else its spans' extent
    step_efficiency: float = 0.0  # median over steps of the step's ideal / its wall time, at most 100%
    ran_as: str | None = None  # an ActorExecutor's way of running its calls ("network", "tape: why")

    @property
    def efficiency(self) -> float:
        """Per step (the median over steps): the step's ideal bound over its wall time."""
        return self.step_efficiency

    def as_dict(self) -> dict:
        return {
            "wall_s": self.wall,
            "step_wall_s": self.step_wall,
            "ran_as": self.ran_as,
            "busy_s": self.busy,
            "utilization": self.utilization,
            "parallelism": self.parallelism,
            "total_work_s": self.total_work,
            "cpu_work_s": self.cpu_work,
            "critical_path_s": self.critical_path,
            "critical_path": [list(x) for x in self.critical_spans],
            "critical_by_step": [[run, step, [list(x) for x in path]]
                                 for (run, step), path in sorted(self.critical_by_step.items())],
            "ideal_s": self.ideal,
            "lanes": self.lanes,
            "cores": self.cores,
            "efficiency": self.efficiency,
            "waits_s": self.waits,
            "top_ops": [{"op": op, "total_s": t, "spans": n} for op, t, n in self.top_ops],
            "top_vertices": self.top_vertices,
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
    """Longest weighted path through the dependency DAG: (its length, its nodes in order).

    Kahn's order over the step's spans, then one pass: a step has a few thousand spans at
    most, and this runs once per step of every trace read (networkx cost 10 ms a step).
    """
    waiting = {node: 0 for node in times}
    after: dict = defaultdict(list)
    for node, before in deps.items():
        for b in before:
            if b in waiting and node in waiting:
                waiting[node] += 1
                after[b].append(node)
    ready = [node for node, n in waiting.items() if n == 0]
    finish: dict = {}
    best: dict = {}
    for node in ready:  # grows while it is walked
        prev = best.get(node)
        finish[node] = times[node] + (finish[prev] if prev is not None else 0.0)
        for nxt in after.get(node, ()):
            candidate = best.get(nxt)
            if candidate is None or finish[node] > finish[candidate]:
                best[nxt] = node
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    if not finish:
        return 0.0, []
    end = max(finish, key=finish.get)
    path = []
    while end is not None:
        path.append(end)
        end = best.get(end)
    return finish[path[0]], path[::-1]


def _covered(spans: list[Span]) -> float:
    """The time some run of these spans was under way: each run from its first ready to its last end,
    overlapping runs merged, the gaps between runs left out."""
    runs: dict[tuple[int, int], list[float]] = {}
    for s in spans:
        extent = runs.setdefault((s.track, s.run), [s.ready, s.end])
        extent[0] = min(extent[0], s.ready, s.start)
        extent[1] = max(extent[1], s.end)
    total, reach = 0.0, None
    for a, b in sorted(runs.values()):
        if reach is None or a > reach:
            total += b - a
            reach = b
        elif b > reach:
            total += b - reach
            reach = b
    return total


def lane_threads(spans: list[Span]) -> int:
    """How many lanes (threads, streams) these spans ran on."""
    return len({s.lane for s in spans})


def by_step(spans: list[Span]) -> dict[tuple[int, int, int], list[Span]]:
    """Spans grouped by (track, run, step): what one step of one executor did."""
    out: dict[tuple[int, int, int], list[Span]] = defaultdict(list)
    for s in spans:
        out[(s.track, s.run, s.step)].append(s)
    return out


def summarize(tracer: Tracer, cores: int | None = None, track: int | None = None) -> Summary:
    """Summary of the spans of one executor's track (`track`), or of all of them.

    Args:
        cores: the cores the bound assumes (default: the machine's).
    """
    from ..machine import cores as machine_cores

    spans = [s for s in tracer.spans if track is None or s.track == track]
    n = cores or machine_cores()
    if not spans:
        return Summary(0.0, {}, {}, 0.0, 0.0, 0.0, [], 0.0, 0, [], 0, cores=n)
    wall = _covered(spans)
    busy: dict[str, float] = defaultdict(float)
    ops: dict[str, list[float]] = defaultdict(list)
    per_vertex: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in spans:
        busy[s.lane] += s.duration
        ops[s.op].append(s.duration)
        per_vertex[(s.vertex, s.phase)].append(s.duration)
    total = sum(busy.values())
    cpu = sum(_cpu(s) for s in spans)
    steps = by_step(spans)
    slices = {(sl.track, sl.run, sl.step): sl.end - sl.start for sl in tracer.slices
              if track is None or sl.track == track}
    longest, longest_path, paths = 0.0, [], {}
    ideals, walls, ratios = [], [], []
    for key, members in steps.items():
        times = {(s.vertex, s.phase): s.duration for s in members}
        length, path = critical_path(times, dependencies(members))
        paths[key[1:]] = path
        if length > longest:
            longest, longest_path = length, path
        work = sum(s.duration for s in members)
        step_ideal = min(max(length, sum(_cpu(s) for s in members) / n), work)
        step_wall = slices.get(key, max(s.end for s in members) - min(s.ready for s in members))
        ideals.append(step_ideal)
        walls.append(step_wall)
        ratios.append(min(step_ideal / step_wall, 1.0) if step_wall > 0 else 0.0)
    ideal = statistics.median(ideals)
    waits: dict[str, float] = defaultdict(float)
    for w in tracer.waits:
        if track is None or w.track == track:
            waits[w.what] += w.end - w.start
    top_vertices = sorted(
        ({"vertex": v, "phase": ph, "count": len(d), "total_s": sum(d), "mean_s": statistics.fmean(d),
          "min_s": min(d), "max_s": max(d)} for (v, ph), d in per_vertex.items()),
        key=lambda r: -r["total_s"])[:20]
    return Summary(
        wall=wall,
        busy=dict(busy),
        utilization={lane: b / wall if wall else 0.0 for lane, b in busy.items()},
        parallelism=total / wall if wall else 0.0,
        total_work=total,
        critical_path=longest,
        critical_spans=longest_path,
        ideal=ideal,
        lanes=len(busy),
        top_ops=sorted(((op, sum(v), len(v)) for op, v in ops.items()), key=lambda x: -x[1])[:10],
        steps=len(steps),
        cpu_work=cpu,
        cores=n,
        waits=dict(waits),
        critical_by_step=paths,
        top_vertices=top_vertices,
        step_wall=statistics.median(walls),
        step_efficiency=statistics.median(ratios),
        ran_as=ran_as(tracer, track),
    )


def _cpu(span: Span) -> float:
    """A span's CPU work: its thread's CPU time (at most its duration), else its duration."""
    return span.duration if span.cpu is None else min(span.cpu, span.duration)


def ran_as(tracer: Tracer, track: int | None) -> str | None:
    """How an ActorExecutor ran its calls on this track, from its "schedule" events: "network", or
    "tape (why)"; None when it recorded none (other executors)."""
    schedules = [e for e in tracer.events if e.name == "schedule" and (track is None or e.track == track)]
    if not schedules:
        return None
    modes = {e.args.get("mode") for e in schedules}
    if modes == {"tape"}:
        return f"tape ({schedules[-1].args.get('reason', '')})"
    if modes == {"network"}:
        return "network"
    return "network and tape (it was still deciding in some calls)"


def summary(tracer: Tracer, cores: int | None = None, track: int | None = None) -> Summary:
    """What the trace says, for one executor's track or for all (see `summarize`)."""
    return summarize(tracer, cores=cores, track=track)
