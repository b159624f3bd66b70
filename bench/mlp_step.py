"""The tape against hand-written numpy on one MLP training step, in fresh processes.

    python bench/mlp_step.py [--processes 5] [--runs 50] [--batch-size 100]

MLP 784-250-100-10, ReLU, softmax cross-entropy, float32: both sides compute
the loss and every param gradient from the same weights and batch (checked
equal before timing). Reports the medians, their ratio and peak memory.
"""

from __future__ import annotations

import argparse

import vertexflow as vf
from vertexflow.benchmarks.families import mlp_train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    report = vf.benchmark(mlp_train(batch=args.batch_size), executors=("sequential",), processes=args.processes,
                          runs=args.runs)
    print(report)
    seq, by_hand = report.result("sequential"), report.result("numpy")
    print(f"\ntape / numpy by hand: {seq.median_s / by_hand.median_s:.2f}x (target <= 1.0x); "
          f"peak memory {seq.peak_bytes / 2**20:.2f} MB vs {by_hand.peak_bytes / 2**20:.2f} MB")
    if args.json:
        report.save(args.json)
    return report


if __name__ == "__main__":
    main()
