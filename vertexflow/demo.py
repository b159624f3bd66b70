"""`vertexflow demo`: a wide inference graph benchmarked on both executors, with a trace to look at.

The figures come from `vf.benchmark` (fresh processes, interleaved, against
a measured lower bound), so the demo cannot claim more than the run
supports: on N cores no speedup above N, no efficiency above 100%.
"""

from __future__ import annotations

import os

import vertexflow as vf

from .actors.schedule import Choice
from .benchmarks.families import wide
from .benchmarks.measure import benchmark
from .machine import cores
from .progress import progress

TRACED_STEPS = 10


def run_demo(branches: int = 8, depth: int = 6, rows: int = 256, cols: int = 1024, processes: int = 3,
             runs: int = 5, threads: int | None = None, out: str = ".", quiet: bool = False, say=print) -> int:
    threads = threads or cores()
    workload = wide(branches=branches, depth=depth, rows=rows, cols=cols)
    say(f"vertexflow demo: {branches} independent branches x {depth} expensive ops over a "
        f"{rows}x{cols} float64 batch ({workload.vertices} vertices), {cores()} cores")
    say(f"timing the sequential tape, ActorExecutor(threads={threads}) and the same ufuncs on {cores()} threads "
        f"by hand (numpy), each in {processes} fresh processes of {runs} runs, interleaved...")
    bar = progress(3 * processes + 1, "benchmark", quiet=quiet)
    with bar:
        report = benchmark(workload, executors=("sequential", "actor", "numpy-threads"), peers=False,
                           threads=threads, processes=processes, runs=runs, progress=lambda line: bar.update(1))
    seq, act, by_hand = report.result("sequential"), report.result("actor"), report.result("numpy-threads")
    bound = report.bound
    say("")
    say(f"{'executor':<28}{'time per run':>14}{'95% CI':>22}{'speedup':>18}{'efficiency':>12}")
    for name, r in (("sequential", seq), (f"actor ({threads} threads)", act),
                    (f"numpy by hand ({cores()} threads)", by_hand)):
        low, high = r.speedup_ci95
        efficiency = "-" if r.efficiency is None else f"{r.efficiency:.0%}"
        say(f"{name:<28}{r.median_s * 1e3:>11.1f} ms{r.ci95_s[0] * 1e3:>10.1f}-{r.ci95_s[1] * 1e3:.1f} ms"
            f"{r.speedup:>9.2f}x [{low:.2f}-{high:.2f}]{efficiency:>11}")
    say(f"the actor executor's speedup is {act.speedup / by_hand.speedup:.0%} of the hand-threaded one's "
        "(the same ufuncs, each branch a task on a thread pool)")
    say("")
    say(f"lower bound {bound['ideal_s'] * 1e3:.1f} ms = max(critical path {bound['critical_path_s'] * 1e3:.1f} ms, "
        f"work {bound['total_work_1_thread_s'] * 1e3:.1f} ms at one BLAS thread / {bound['cores']} cores); "
        f"efficiency = bound / time")
    if act.info:
        say(f"the actor executor ran as {act.info}")
    say("outputs identical on both executors: yes (checked bit for bit before timing)")
    for warning in report.warnings:
        say(f"warning: {warning}")

    # Traced runs of each, after warm-up, for the viewer: both runs aligned, and why one was faster.
    g, feeds, fetch = workload.graph, workload.feeds, workload.fetch
    seq_ex = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, threads=threads) as act_ex:
        for _ in range(Choice.calls_to_decide() + 3):  # past the actor executor's choice of schedule
            seq_ex.run(feeds, fetch)
            act_ex.run(feeds, fetch)
        with vf.trace() as everything:
            with vf.trace() as seq_trace:
                for _ in range(TRACED_STEPS):
                    seq_ex.run(feeds, fetch)
            with vf.trace() as act_trace:
                for _ in range(TRACED_STEPS):
                    act_ex.run(feeds, fetch)
    comparison = seq_trace.compare(act_trace)
    os.makedirs(out, exist_ok=True)
    json_path = everything.save(os.path.join(out, "trace.json"))
    html_path = comparison.save_html(os.path.join(out, "trace.html"),
                                     title=f"vertexflow demo: the wide graph, sequential against "
                                           f"ActorExecutor(threads={threads})")
    say("")
    say(f"traced ({TRACED_STEPS} steps each, medians): {comparison.speedup:.2f}x, {comparison.efficiency:.0%} of the ideal; the concurrent "
        f"step's {comparison.concurrent_wall_s * 1e3:.1f} ms:")
    for part, seconds in comparison.breakdown():
        say(f"  {seconds * 1e3:8.2f} ms  {part}")
    say(f"trace viewer: {os.path.abspath(html_path)}  (both runs and the breakdown; works offline)")
    say(f"Chrome trace: {os.path.abspath(json_path)}  (Perfetto UI or chrome://tracing)")
    return 0
