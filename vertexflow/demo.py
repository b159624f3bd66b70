"""`vertexflow demo`: a wide inference graph on both executors, compared, with a trace to look at."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

import vertexflow as vf

from .benchmarks.families import wide
from .machine import cores
from .trace.analysis import summarize


def run_demo(branches: int = 8, depth: int = 6, rows: int = 256, cols: int = 512, repeat: int = 5,
             threads: int | None = None, out: str = ".", say=print) -> int:
    from tqdm import tqdm

    threads = threads or cores()
    workload = wide(branches=branches, depth=depth, rows=rows, cols=cols)
    g, feeds, fetch = workload.graph, workload.feeds, workload.fetch
    say(f"vertexflow demo: {branches} independent branches x {depth} expensive ops over a "
        f"{rows}x{cols} float64 batch ({workload.vertices} vertices), {cores()} cores")

    seq = vf.SequentialExecutor(g)
    times = {"sequential": [], f"actor ({threads} threads)": []}
    with vf.ActorExecutor(g, threads=threads) as act:
        runners = {"sequential": lambda: seq.run(feeds, fetch), f"actor ({threads} threads)": lambda: act.run(feeds, fetch)}
        with tqdm(total=2 * (repeat + 1), desc="running", unit="run", leave=False, dynamic_ncols=True) as bar:
            outputs = {}
            for name, fn in runners.items():
                outputs[name] = fn()  # warm-up (the actor network is wired here)
                bar.update(1)
            for _ in range(repeat):
                for name, fn in runners.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
                    bar.update(1)
        first, second = outputs.values()
        same = all(np.array_equal(a, b) for a, b in zip(first, second))

        # Work and critical path from one traced sequential run; the actor run traced for the viewer.
        with vf.trace() as seq_trace:
            for _ in range(3):
                seq.run(feeds, fetch)
        with vf.trace() as tracer:
            act.run(feeds, fetch)
    work = summarize(seq_trace, cores=threads)  # per-vertex medians over three runs
    total_work = work.total_work / work.steps
    ideal = max(work.critical_path, total_work / threads)
    os.makedirs(out, exist_ok=True)
    json_path = tracer.save(os.path.join(out, "trace.json"))
    html_path = tracer.save_html(os.path.join(out, "trace.html"),
                                 title=f"vertexflow demo: wide graph on ActorExecutor(threads={threads})")

    seq_median = statistics.median(times["sequential"])
    say("")
    say(f"{'executor':<22}{'time per run':>14}{'speedup':>10}{'ideal bound':>14}{'efficiency':>12}")
    for name, ts in times.items():
        median = statistics.median(ts)
        say(f"{name:<22}{median * 1e3:>11.1f} ms{seq_median / median:>9.2f}x{ideal * 1e3:>11.1f} ms"
            f"{ideal / median:>11.0%}")
    say("")
    say(f"outputs identical on both executors: {'yes' if same else 'NO'}")
    say(f"ideal bound = max(critical path {work.critical_path * 1e3:.1f} ms, "
        f"total work {total_work * 1e3:.1f} ms / {threads} cores)")
    say(f"trace viewer: {os.path.abspath(html_path)}  (open it in a browser; works offline)")
    say(f"Chrome trace: {os.path.abspath(json_path)}  (Perfetto UI or chrome://tracing)")
    return 0 if same else 1
