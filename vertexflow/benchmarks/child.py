"""One benchmark process: time one configuration on one workload, and say what it measured.

Run as `python -m vertexflow.benchmarks.child` with a JSON spec on stdin (a
fresh interpreter, for workloads with a recipe), or called in a forked
process (`run_spec`, for a graph built in memory). The spec names the
configuration, the warm-up and timed runs, and whether to measure the lower
bound (traced sequential runs). The answer is one JSON object on stdout.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from ..machine import blas_threads, cores
from .configs import Config, runner
from .workload import Workload, from_recipe


def run_spec(spec: dict, workload: Workload | None = None) -> dict[str, Any]:
    """Time one configuration as `spec` says; the figures as a JSON-able dict."""
    if spec.get("prelude"):
        run_prelude(spec["prelude"])
    if workload is None:
        workload = from_recipe(spec["recipe"])
    if spec.get("bound"):
        return measure_bound(workload, spec.get("repeat", 3))
    config = Config(spec["config"], exact=spec.get("exact", True))
    run = runner(config, workload, spec.get("threads"))
    try:
        warm = []
        for _ in range(max(spec.get("warmup", 2), 1)):
            start = time.perf_counter()
            run.unit()
            warm.append(time.perf_counter() - start)
        # As pyperf does: a timed run of a short unit is the mean of enough units back to back to
        # last `min_run_s`, so timer resolution and one-off hiccups do not make the spread.
        loops = loops_for(min(warm[-3:]), spec.get("min_run_s", MIN_RUN_S))
        times = []
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            for _ in range(loops):
                run.unit()
            times.append((time.perf_counter() - start) / loops)
        peak = peak_memory(run.unit, run.executor) if spec.get("memory", True) else None
        info = run.choice()
    finally:
        run.close()
    return {"config": config.name, "times_s": times, "loops": loops, "peak_bytes": peak, "info": info}


MIN_RUN_S = 0.02  # a timed run lasts at least this long (units are looped to fill it)
MAX_LOOPS = 100


def loops_for(unit_s: float, min_run_s: float) -> int:
    """How many units back to back make one timed run last at least min_run_s (1 for long units)."""
    if unit_s <= 0:
        return MAX_LOOPS
    return max(1, min(MAX_LOOPS, math.ceil(min_run_s / unit_s)))


def run_prelude(recipe: dict) -> None:
    """Run another workload first, as a program that did other work before this one would."""
    from ..executor import SequentialExecutor

    other = from_recipe(recipe)
    seq = SequentialExecutor(other.graph)
    for _ in range(3):
        seq.run(other.feeds, other.fetch)
    del other, seq
    gc.collect()


def peak_memory(unit, executor=None) -> int:
    """Peak bytes one more unit needs: what it allocates (numpy's arrays included), at its peak,
    plus the buffers an executor's pool keeps from earlier units (tracemalloc does not see those)."""
    gc.collect()
    held = 0
    for ex in (executor, getattr(executor, "_tape", None)):
        buffers = getattr(ex, "buffers", None)
        if buffers is not None and (ex is executor or buffers is not executor.buffers):
            held += buffers.held_bytes()
    tracemalloc.start()
    try:
        unit()
        return tracemalloc.get_traced_memory()[1] + held
    finally:
        tracemalloc.stop()


def measure_bound(workload: Workload, repeat: int = 3) -> dict[str, Any]:
    """The figures a lower bound on any schedule of one unit comes from, measured on the tape.

    - total work: the sum of every vertex's time with one BLAS thread (so that work / cores
      is a bound: no vertex's work shrinks below that by running beside others);
    - critical path: the longest chain of dependent vertices, with BLAS's own threads
      (the fastest each vertex gets), an async vertex's awaits included (they hold no core,
      but what reads its value waits for them);
    both scaled by the ratio of an untraced run to a traced one, so the tracer's own cost is
    not counted. The bound is max(critical path, total work / cores).
    """
    from ..executor import SequentialExecutor
    from ..trace import Tracer
    from ..trace.analysis import critical_path, dependencies, vertex_times

    seq = SequentialExecutor(workload.graph)
    step_feeds = workload.batches[0] if workload.mode == "stream" else workload.feeds

    def one(tracer=None):
        if workload.mode == "backward":
            return seq.backward_nodes(step_feeds, workload.loss, seq._plan(workload.loss, None), [], False, False,
                                      None, tracer)
        return seq.run_nodes(step_feeds, list(workload.fetch), False, None, tracer)

    for _ in range(3):
        one()
    untraced = []
    for _ in range(max(repeat, 5)):
        start = time.perf_counter()
        one()
        untraced.append(time.perf_counter() - start)

    def traced_figures():
        tracer = Tracer()
        start = time.perf_counter()
        one(tracer)
        wall = time.perf_counter() - start
        spans = tracer.spans
        times = vertex_times(spans)
        # An async vertex's await holds no core: not work, but its dependents wait for it all the same.
        awaited = 0.0
        for w in tracer.waits:
            key = (w.vertex.removesuffix(" (backward)"), "backward" if w.vertex.endswith(" (backward)") else "forward")
            if w.what == "await" and key in times:
                times[key] += w.end - w.start
                awaited += w.end - w.start
        path, _ = critical_path(times, dependencies(spans))
        return sum(s.duration for s in spans), path, wall, [s.duration for s in spans], awaited

    full = [traced_figures() for _ in range(repeat)]
    with blas_threads(1):
        one()
        single = [traced_figures() for _ in range(repeat)]
    untraced_s = statistics.median(untraced)
    traced_wall = statistics.median(f[2] for f in full)
    scale = min(1.0, untraced_s / traced_wall) if traced_wall > 0 else 1.0
    work_1 = statistics.median(f[0] for f in single) * scale
    # A chain is no longer than all the work (and awaits); measured apart, noise could say otherwise.
    awaited = statistics.median(f[4] for f in full)
    path = min(statistics.median(f[1] for f in full) * scale, work_1 + awaited)
    work_full = statistics.median(f[0] for f in full) * scale
    steps = len(workload.batches) if workload.mode == "stream" else 1
    n = cores()
    vertex_us = [d * 1e6 for d in full[0][3]]
    return {
        "bound": True,
        "cores": n,
        "steps": steps,
        "critical_path_s": path,
        "awaited_s": awaited * steps,
        "total_work_1_thread_s": work_1 * steps,
        "total_work_s": work_full * steps,
        "ideal_s": max(path, work_1 * steps / n),
        "tape_step_s": untraced_s,
        "vertex_us_median": float(np.median(vertex_us)) if vertex_us else 0.0,
        "vertices": workload.vertices,
    }


def main() -> int:
    spec = json.load(sys.stdin)
    try:
        result = run_spec(spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which says it in one line
        result = {"error": f"{type(exc).__name__}: {exc}"}
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
