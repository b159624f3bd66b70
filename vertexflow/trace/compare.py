"""Why a concurrent run was (or was not) faster than the sequential one: two traces of one graph, aligned.

`Tracer.compare(other)` takes a sequential trace (`self`) and a concurrent
one, and breaks the concurrent run's time per step down into what the
figures support:

- ideal: the bound from the sequential run, max(its critical path, its work /
  cores): what perfect overlap of the same work would take;
- work inflation: the extra work, per core, because vertices ran slower
  beside each other (memory bandwidth, BLAS turns, caches), per vertex as the
  ratio of its concurrent time to its sequential time;
- idle on the critical path: time the concurrent run's critical path spent
  waiting (for a worker, the BLAS lock, an input) rather than computing;
- scheduling overhead: the rest (hand-offs and bookkeeping between vertices).

The four add up to the concurrent step's wall time; "unexplained" is what
remains when they overshoot it (they are estimated apart). A saved
comparison is the viewer with both runs, aligned, and the table.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .analysis import by_step, critical_path, dependencies

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
    sequential: Tracer
    concurrent: Tracer
    sequential_label: str
    concurrent_label: str
    cores: int
    sequential_wall_s: float  # medians per step
    concurrent_wall_s: float
    ideal_s: float
    work_inflation_s: float
    idle_on_critical_path_s: float
    scheduling_overhead_s: float
    unexplained_s: float
    vertices: list[VertexRatio] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.sequential_wall_s / self.concurrent_wall_s if self.concurrent_wall_s > 0 else 0.0

    @property
    def efficiency(self) -> float:
        return min(self.ideal_s / self.concurrent_wall_s, 1.0) if self.concurrent_wall_s > 0 else 0.0

    def breakdown(self) -> list[tuple[str, float]]:
        return [("ideal (sequential work, perfectly overlapped)", self.ideal_s),
                ("work inflation (vertices slower beside each other)", self.work_inflation_s),
                ("idle on the critical path (waiting for workers, locks, inputs)", self.idle_on_critical_path_s),
                ("scheduling overhead (hand-offs between vertices)", self.scheduling_overhead_s)]

    def as_dict(self) -> dict:
        return {
            "sequential": self.sequential_label, "concurrent": self.concurrent_label, "cores": self.cores,
            "sequential_wall_s": self.sequential_wall_s, "concurrent_wall_s": self.concurrent_wall_s,
            "speedup": self.speedup, "efficiency": self.efficiency,
            "breakdown": [{"part": k, "seconds": v} for k, v in self.breakdown()],
            "unexplained_s": self.unexplained_s,
            "vertices": [{"vertex": v.vertex, "phase": v.phase, "sequential_s": v.sequential_s,
                          "concurrent_s": v.concurrent_s, "inflation": v.inflation} for v in self.vertices],
        }

    def __str__(self) -> str:
        lines = [f"{self.concurrent_label} against {self.sequential_label}, per step (medians):",
                 f"  sequential {self.sequential_wall_s * 1e3:.3f} ms, concurrent {self.concurrent_wall_s * 1e3:.3f} ms: "
                 f"{self.speedup:.2f}x, {self.efficiency:.0%} of the ideal"]
        for part, seconds in self.breakdown():
            share = seconds / self.concurrent_wall_s if self.concurrent_wall_s else 0.0
            lines.append(f"  {seconds * 1e3:9.3f} ms  {share:6.1%}  {part}")
        if self.unexplained_s > 0:
            lines.append(f"  ({self.unexplained_s * 1e3:.3f} ms over the wall time: the parts are estimated apart)")
        worst = sorted(self.vertices, key=lambda v: -(v.concurrent_s - v.sequential_s))[:8]
        if worst:
            lines.append("  vertices that slowed the most (concurrent / sequential time):")
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


def _steps(spans: list[Span]) -> list[list[Span]]:
    return [members for _, members in sorted(by_step(spans).items())]


def compare(sequential: Tracer, concurrent: Tracer, sequential_track: int | None = None,
            concurrent_track: int | None = None, cores: int | None = None) -> Comparison:
    """The comparison of a sequential trace with a concurrent one of the same graph (one track each)."""
    from ..machine import cores as machine_cores

    n = cores or machine_cores()
    st = sequential_track if sequential_track is not None else _main_track(sequential)
    ct = concurrent_track if concurrent_track is not None else _main_track(concurrent)
    seq = [s for s in sequential.spans if s.track == st]
    conc = [s for s in concurrent.spans if s.track == ct]
    seq_steps, conc_steps = _steps(seq), _steps(conc)

    def wall(members: list[Span]) -> float:
        return max(s.end for s in members) - min(s.ready for s in members)

    def work(members: list[Span]) -> float:
        return sum(s.duration for s in members)

    seq_wall = statistics.median(wall(m) for m in seq_steps)
    conc_wall = statistics.median(wall(m) for m in conc_steps)
    seq_work = statistics.median(work(m) for m in seq_steps)
    conc_work = statistics.median(work(m) for m in conc_steps)
    seq_times = _median_times(seq)
    seq_path, _ = critical_path(seq_times, dependencies(seq))
    ideal = min(max(seq_path, seq_work / n), seq_work)
    inflation = max(conc_work - seq_work, 0.0) / n
    idle = statistics.median(_idle_on_path(m) for m in conc_steps)
    overhead = conc_wall - ideal - inflation - idle
    unexplained = max(-overhead, 0.0)
    conc_times = _median_times(conc)
    vertices = [VertexRatio(v, ph, seq_times[(v, ph)], conc_times[(v, ph)])
                for (v, ph) in sorted(conc_times) if (v, ph) in seq_times]
    return Comparison(sequential, concurrent, sequential.track_label(st), concurrent.track_label(ct), n, seq_wall,
                      conc_wall, ideal, inflation, idle, max(overhead, 0.0), unexplained, vertices)


def _median_times(spans: list[Span]) -> dict[tuple[str, str], float]:
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in spans:
        times[(s.vertex, s.phase)].append(s.duration)
    return {k: statistics.median(v) for k, v in times.items()}


def _idle_on_path(members: list[Span]) -> float:
    """Along one step's critical path (by the step's own times), the time its spans waited after being ready."""
    times = {(s.vertex, s.phase): s.duration for s in members}
    _, path = critical_path(times, dependencies(members))
    by = {(s.vertex, s.phase): s for s in members}
    return sum(max(by[k].start - by[k].ready, 0.0) for k in path if k in by)
