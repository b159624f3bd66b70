"""The actor executor's targets (issue 3), measured in one run, as ratios to the sequential executor.

    python bench/targets.py [--repeat 4] [--batches 200] [--json out.json]

- wide: 8 independent branches of 6 GIL-releasing elementwise ops (>= 2 ms each):
  actor >= 1.8x sequential and >= 0.9 of the ideal bound max(critical path, work / cores);
- fine-grained: ~1,000 cheap 64x64 elementwise vertices in chains and fans:
  actor time <= 1.2x sequential;
- streaming inference through a 4-member MLP ensemble over 200 batches:
  actor throughput >= 1.7x sequential.
"""

from __future__ import annotations

import argparse
import json

from vertexflow.benchmarks.families import fine_grained, mlp_ensemble, wide
from vertexflow.benchmarks.measure import measure
from vertexflow.machine import cores


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    n = cores()
    checks = [
        ("wide", wide(branches=8, depth=6), lambda m: m.speedup >= 1.8 and m.efficiency >= 0.9,
         "speedup >= 1.8x and efficiency >= 0.9"),
        ("fine-grained", fine_grained(vertices=1000), lambda m: 1 / m.speedup <= 1.2, "time <= 1.2x sequential"),
        ("ensemble stream", mlp_ensemble(members=4, batches=args.batches), lambda m: m.speedup >= 1.7,
         "throughput >= 1.7x sequential"),
    ]
    out = {}
    for label, workload, ok, target in checks:
        results = measure(workload, threads=[n], repeat=args.repeat, memory=False, blas_share=True)
        by_name = {m.executor: m for m in results}
        actor = by_name[f"actor-{n}"]
        print(f"{label:16s} {workload.name}")
        for m in results:
            print(f"    {m.executor:22s} {m.median_s * 1e3:10.2f} ms   {m.speedup:5.2f}x sequential   "
                  f"efficiency {m.efficiency:5.2f}")
        print(f"    target ({target}): {'met' if ok(actor) else 'MISSED'}")
        out[label] = [m.as_dict() for m in results]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
