"""The speed targets, measured with vf.benchmark (fresh processes, interleaved), as ratios.

    python bench/targets.py [--processes 5] [--runs 7] [--json targets.json]

Each target is a ratio of medians from one benchmark; the table says whether
it was met, with the figures behind it:

- every family of `--suite quick`: actor >= 0.95x sequential;
- wide 8x6: actor >= 1.85x sequential, and >= 0.92 of the lower bound;
- deep chain: sequential within 1.05x of the fastest of actor-1, Dask get_sync and numpy by hand;
- fine_grained(1000): actor time <= 1.1x sequential, also in processes that ran the wide graph first;
- MLP 784-250-100-10 train step: tape <= 1.0x the hand-written numpy step, peak memory no higher;
- mlp_ensemble stream and mlp_train: actor >= 1.0x sequential.
"""

from __future__ import annotations

import argparse
import json
import statistics

import vertexflow as vf
from vertexflow.benchmarks.families import FAMILIES
from vertexflow.benchmarks.measure import launch
from vertexflow.benchmarks.report import SUITES


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    figures = {}
    rows = []

    def bench(family, params, executors, peers=False):
        workload = FAMILIES[family](**params)
        report = vf.benchmark(workload, executors=executors, peers=peers, processes=args.processes, runs=args.runs)
        figures[workload.name] = report.as_dict()
        print(report, flush=True)
        print(flush=True)
        return report

    def target(what, value, goal, met, detail):
        rows.append((what, value, goal, "met" if met else "MISSED", detail))

    for family, params in SUITES["quick"]:
        report = bench(family, params, ("sequential", "actor", "actor-1"), peers=family in ("deep", "mlp_train"))
        actor = report.result("actor")
        target(f"{report.workload}: actor / sequential", f"{actor.speedup:.2f}x", ">= 0.95x",
               actor.speedup >= 0.95, f"CI {actor.speedup_ci95[0]:.2f}-{actor.speedup_ci95[1]:.2f}; {actor.info}")
        if family == "wide" and params["branches"] == 8:
            target(f"{report.workload}: actor / sequential", f"{actor.speedup:.2f}x", ">= 1.85x",
                   actor.speedup >= 1.85, f"efficiency {actor.efficiency:.0%}")
            target(f"{report.workload}: efficiency", f"{actor.efficiency:.0%}", ">= 92%", actor.efficiency >= 0.92,
                   f"bound {report.bound['ideal_s'] * 1e3:.2f} ms")
        if family == "deep":
            seq = report.result("sequential")
            peers = [r for r in report.results if r.executor in ("actor-1", "dask-sync", "numpy")]
            best = min(peers, key=lambda r: r.median_s)
            ratio = seq.median_s / best.median_s
            target(f"{report.workload}: sequential / fastest of actor-1, dask-sync, numpy", f"{ratio:.2f}x",
                   "<= 1.05x", ratio <= 1.05, f"fastest: {best.executor}")
        if family == "fine_grained":
            ratio = 1 / actor.speedup
            target(f"{report.workload}: actor time / sequential", f"{ratio:.2f}x", "<= 1.1x", ratio <= 1.1, "")
        if family == "mlp_train":
            seq, by_hand = report.result("sequential"), report.result("numpy")
            ratio = seq.median_s / by_hand.median_s
            target("MLP 784-250-100-10 step: tape / numpy by hand", f"{ratio:.2f}x", "<= 1.0x", ratio <= 1.0,
                   f"peak {seq.peak_bytes / 2**20:.1f} MB vs {by_hand.peak_bytes / 2**20:.1f} MB")
            target("MLP step peak memory: tape / numpy", f"{seq.peak_bytes / by_hand.peak_bytes:.2f}x", "<= 1.0x",
                   seq.peak_bytes <= by_hand.peak_bytes, "")
        if family in ("mlp_ensemble", "mlp_train"):
            target(f"{report.workload}: actor / sequential", f"{actor.speedup:.2f}x", ">= 1.0x",
                   actor.speedup >= 1.0, f"CI {actor.speedup_ci95[0]:.2f}-{actor.speedup_ci95[1]:.2f}")

    # fine_grained(1000) in processes that first ran the wide graph (its large arrays freed).
    fine = FAMILIES["fine_grained"](vertices=1000)
    after = {}
    for config in ("sequential", "actor"):
        medians = []
        for _ in range(args.processes):
            result = launch(fine, {"config": config, "runs": args.runs, "warmup": 10, "memory": False,
                                   "prelude": {"kind": "family", "family": "wide",
                                               "params": {"branches": 8, "depth": 6}}})
            medians.append(statistics.median(result["times_s"]))
        after[config] = statistics.median(medians)
    ratio = after["actor"] / after["sequential"]
    target("fine_grained(1000) after the wide graph: actor time / sequential", f"{ratio:.2f}x", "<= 1.1x",
           ratio <= 1.1, f"sequential {after['sequential'] * 1e3:.2f} ms, actor {after['actor'] * 1e3:.2f} ms")

    width = max(len(r[0]) for r in rows)
    print(f"{'target':<{width}}  {'measured':>9}  {'goal':>9}  result")
    for what, value, goal, verdict, detail in rows:
        print(f"{what:<{width}}  {value:>9}  {goal:>9}  {verdict:<6}  {detail}")
    out = {"targets": [dict(zip(("target", "measured", "goal", "result", "detail"), r)) for r in rows],
           "reports": figures}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
