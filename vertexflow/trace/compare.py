"""Why a concurrent run was (or was not) faster than the sequential one: two traces of one graph, aligned.

`Tracer.compare(other)` takes a sequential trace (`self`) and a concurrent
one. Each step's time is its call's, from entry to return (the step slice an
executor records around every call), so the comparison's speedup is the
ratio of the traced calls' wall times: nothing an executor does before or
after its vertices (handing the step to its host, the results back) is left
out. A span's time is split into CPU work (its thread's CPU time, read inside
its clock window) and time its thread was descheduled.

The concurrent step's time is broken down into parts that add up to it:

- ideal: the bound from the sequential run, max(its critical path, its CPU
  work / cores), capped at that work: what perfect overlap would take;
- work inflation: the extra CPU work of the concurrent step spread over the
  cores (vertices slower beside each other: memory bandwidth, caches);
- waiting for a core: along the concurrent step's critical path, the time its
  vertices were runnable but descheduled (more threads than cores);
- idle on the critical path: along that path, the time vertices waited after
  being ready (for a worker, the BLAS lock, an input, the host);
- hand-off overhead: the rest of the call (hand-offs between vertices and
  threads, the host, bookkeeping).

The parts are estimated apart; when the first four overshoot the step, the
overshoot is reported as `unexplained` and hand-off overhead is zero. When the
concurrent executor ran its calls as one actor (the tape), nothing is put down
to hand-offs: `ran_as_tape` says so and the rest is "the tape's own overhead".
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .analysis import by_step, critical_path, dependencies, lane_threads

if TYPE_CHECKING:
    from .tracer import Span, Tracer


@dataclass
class VertexRatio:
    vertex: str
    phase: str
    sequential_s: float
    concurrent_s: float

    @property
    def inflation(self) -> float:
        return self.concurrent_s / self.sequential_s if self.sequential_s > 0 else float("inf")


@dataclass
class Comparison:
    """Per step (medians over the steps traced) unless a name says otherwise."""

    sequential: Tracer
    concurrent: Tracer
    sequential_label: str
    concurrent_label: str
    cores: int
    sequential_wall_s: float
    concurrent_wall_s: float
    ideal_s: float
    work_inflation_s: float
    waiting_for_core_s: float
    idle_on_critical_path_s: float
    hand_off_overhead_s: float
    unexplained_s: float
    vertices: list[VertexRatio] = field(default_factory=list)
    ran_as_tape: str | None = None  # why the concurrent executor ran its calls as one actor, if it did
    steps: tuple[int, int] = (0, 0)  # steps traced: sequential, concurrent

    @property
    def speedup(self) -> float:
        return self.sequential_wall_s / self.concurrent_wall_s if self.concurrent_wall_s > 0 else 0.0

    @property
    def efficiency(self) -> float:
        return min(self.ideal_s / self.concurrent_wall_s, 1.0) if self.concurrent_wall_s > 0 else 0.0

    def breakdown(self) -> list[tuple[str, float]]:
        """The concurrent step's time, per step, in parts that add up to it (see the module docstring)."""
        rest = ("the tape's own overhead (one actor: no hand-offs)" if self.ran_as_tape else
                "hand-off overhead (between vertices and threads, the host)")
        return [("ideal (the sequential work, perfectly overlapped)", self.ideal_s),
                ("work inflation (vertices slower beside each other)", self.work_inflation_s),
                ("waiting for a core (more threads than cores)", self.waiting_for_core_s),
                ("idle on the critical path (waiting for a worker, a lock, an input)", self.idle_on_critical_path_s),
                (rest, self.hand_off_overhead_s)]

    def slowed(self) -> list[VertexRatio]:
        """The vertices that took longer in the concurrent run, the most added time first."""
        return sorted((v for v in self.vertices if v.concurrent_s > v.sequential_s),
                      key=lambda v: -(v.concurrent_s - v.sequential_s))

    def as_dict(self) -> dict:
        return {
            "sequential": self.sequential_label, "concurrent": self.concurrent_label, "cores": self.cores,
            "per_step": True, "steps": list(self.steps),
            "sequential_wall_s": self.sequential_wall_s, "concurrent_wall_s": self.concurrent_wall_s,
            "speedup": self.speedup, "efficiency": self.efficiency, "ran_as_tape": self.ran_as_tape,
            "breakdown": [{"part": k, "seconds": v} for k, v in self.breakdown()],
            "unexplained_s": self.unexplained_s,
            "vertices": [{"vertex": v.vertex, "phase": v.phase, "sequential_s": v.sequential_s,
                          "concurrent_s": v.concurrent_s, "inflation": v.inflation} for v in self.vertices],
        }

    def __str__(self) -> str:
        lines = [f"{self.concurrent_label} against {self.sequential_label}, per step (medians of "
                 f"{self.steps[1]} and {self.steps[0]} calls, each from entry to return):",
                 f"  sequential {self.sequential_wall_s * 1e3:.3f} ms, concurrent {self.concurrent_wall_s * 1e3:.3f} ms: "
                 f"{self.speedup:.2f}x, {self.efficiency:.0%} of the ideal"]
        if self.ran_as_tape:
            lines.append(f"  the concurrent executor ran its calls as one actor, the tape: {self.ran_as_tape}")
        for part, seconds in self.breakdown():
            share = seconds / self.concurrent_wall_s if self.concurrent_wall_s else 0.0
            lines.append(f"  {seconds * 1e3:9.3f} ms  {share:6.1%}  {part}")
        if self.unexplained_s > 0:
            lines.append(f"  ({self.unexplained_s * 1e3:.3f} ms over the step's time: the parts are estimated apart)")
        worst = self.slowed()[:8]
        if worst:
            lines.append("  vertices that slowed the most (concurrent / sequential time, per step):")
            for v in worst:
                lines.append(f"    {v.vertex} ({v.phase}): {v.sequential_s * 1e6:.1f} -> {v.concurrent_s * 1e6:.1f} us, "
                             f"{v.inflation:.2f}x")
        return "\n".join(lines)

    def save_html(self, path: str, title: str = "vertexflow: sequential against concurrent") -> str:
        """The viewer with both runs, aligned, and this comparison on top."""
        from .viewer import write_html

        write_html(self.concurrent, path, title=title, compare=self)
        return path


def _main_track(tracer: Tracer) -> int:
    counts: dict[int, int] = defaultdict(int)
    for s in tracer.spans:
        counts[s.track] += 1
    if not counts:
        raise ValueError("the trace holds no spans")
    return max(counts, key=counts.get)


def step_walls(tracer: Tracer, track: int, spans_by_step: dict) -> dict[tuple[int, int], float]:
    """Each step's time: its call's slice (entry to return) where recorded, else its spans' extent."""
    walls = {(s.run, s.step): s.end - s.start for s in tracer.slices if s.track == track}
    for (_, run, step), members in spans_by_step.items():
        if (run, step) not in walls:
            walls[(run, step)] = max(s.end for s in members) - min(s.ready for s in members)
    return walls


def cpu_of(span: Span) -> float:
    """A span's CPU work: its thread's CPU time (never more than its duration), else its duration."""
    return span.duration if span.cpu is None else min(span.cpu, span.duration)


def compare(sequential: Tracer, concurrent: Tracer, sequential_track: int | None = None,
            concurrent_track: int | None = None, cores: int | None = None) -> Comparison:
    """The comparison of a sequential trace with a concurrent one of the same graph (one track each)."""
    from ..machine import cores as machine_cores

    n = cores or machine_cores()
    st = sequential_track if sequential_track is not None else _main_track(sequential)
    ct = concurrent_track if concurrent_track is not None else _main_track(concurrent)
    seq = [s for s in sequential.spans if s.track == st]
    conc = [s for s in concurrent.spans if s.track == ct]
    seq_steps, conc_steps = by_step(seq), by_step(conc)
    seq_walls, conc_walls = step_walls(sequential, st, seq_steps), step_walls(concurrent, ct, conc_steps)
    seq_wall = statistics.median(seq_walls[(run, step)] for (_, run, step) in seq_steps)
    conc_wall = statistics.median(conc_walls[(run, step)] for (_, run, step) in conc_steps)
    seq_cpu = statistics.median(sum(cpu_of(s) for s in m) for m in seq_steps.values())
    conc_cpu = statistics.median(sum(cpu_of(s) for s in m) for m in conc_steps.values())
    seq_times = _median_times(seq, cpu_of)
    seq_path, _ = critical_path(seq_times, dependencies(seq))
    ideal = min(max(seq_path, seq_cpu / n), seq_cpu)
    inflation = max(conc_cpu - seq_cpu, 0.0) / n
    on_path = [_on_critical_path(m) for m in conc_steps.values()]
    waiting_core = statistics.median(c for c, _ in on_path)
    idle = statistics.median(i for _, i in on_path)
    rest = conc_wall - ideal - inflation - waiting_core - idle
    conc_times = _median_times(conc, lambda s: s.duration)
    seq_durations = _median_times(seq, lambda s: s.duration)
    vertices = [VertexRatio(v, ph, seq_durations[(v, ph)], conc_times[(v, ph)])
                for (v, ph) in sorted(conc_times) if (v, ph) in seq_durations]
    return Comparison(sequential, concurrent, sequential.track_label(st), concurrent.track_label(ct), n, seq_wall,
                      conc_wall, ideal, inflation, waiting_core, idle, max(rest, 0.0), max(-rest, 0.0), vertices,
                      ran_as_tape=_ran_as_tape(concurrent, ct, conc), steps=(len(seq_steps), len(conc_steps)))


def _median_times(spans: list[Span], measure) -> dict[tuple[str, str], float]:
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in spans:
        times[(s.vertex, s.phase)].append(measure(s))
    return {k: statistics.median(v) for k, v in times.items()}


def _on_critical_path(members: list[Span]) -> tuple[float, float]:
    """Along one step's critical path (by the step's own times): the time its spans were descheduled,
    and the time they waited after being ready."""
    times = {(s.vertex, s.phase): s.duration for s in members}
    _, path = critical_path(times, dependencies(members))
    by = {(s.vertex, s.phase): s for s in members}
    descheduled = sum(by[k].duration - cpu_of(by[k]) for k in path if k in by)
    waited = sum(max(by[k].start - by[k].ready, 0.0) for k in path if k in by)
    return descheduled, waited


def _ran_as_tape(tracer: Tracer, track: int, spans: list[Span]) -> str | None:
    """Why the concurrent executor ran its calls as the tape, if it did (its "schedule" events say so),
    or that every vertex ran on one thread."""
    schedules = [e for e in tracer.events if e.track == track and e.name == "schedule"]
    if schedules:
        modes = {e.args.get("mode") for e in schedules}
        return schedules[-1].args.get("reason", "") if modes == {"tape"} else None
    return "its vertices all ran on one thread" if spans and lane_threads(spans) == 1 else None


def compare_with(tracer: Tracer, other: Tracer) -> Comparison:
    """This (sequential) run against `other` (concurrent): why the concurrent one was or was not faster."""
    return compare(tracer, other)
