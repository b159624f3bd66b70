"""The CUDA backend: a wide graph on 1 stream against K streams, sequential against actors.

    python bench/gpu_streams.py [--streams 4] [--branches 8] [--size 2048] [--repeat 10]

Needs cupy and a CUDA device (pip install 'vertexflow[gpu]'); without them it
says so and exits. With `--emulate` it runs the same plans on CPU threads
(the event logic, not a speed figure).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import vertexflow as vf
from vertexflow.benchmarks.families import wide
from vertexflow.benchmarks.timing import interleaved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--emulate", action="store_true", help="CPU threads instead of CUDA streams")
    args = parser.parse_args(argv)
    device = "cpu" if args.emulate else "cuda"
    w = wide(branches=args.branches, depth=args.depth, rows=args.size, cols=args.size)
    try:
        runners = {
            "sequential (default stream)": vf.SequentialExecutor(w.graph, device=device),
            "streams=1": vf.StreamExecutor(w.graph, streams=1, device=device),
            f"streams={args.streams}": vf.StreamExecutor(w.graph, streams=args.streams, device=device),
            f"actor, streams={args.streams}": vf.ActorExecutor(w.graph, streams=args.streams, device=device),
        }
    except vf.DeviceError as exc:
        print(f"no GPU run: {exc}")
        return 0
    reference = vf.SequentialExecutor(w.graph).run(w.feeds, w.fetch)[0]
    for ex in runners.values():
        out = ex.run(w.feeds, w.fetch)[0]  # warm-up (kernels compile on first use)
        np.testing.assert_allclose(out, reference, rtol=1e-10)
    timed = interleaved({name: (lambda ex=ex: ex.run(w.feeds, w.fetch)) for name, ex in runners.items()},
                        args.repeat)
    times = {name: statistics.median(ts) for name, ts in timed.items()}
    for ex in runners.values():
        ex.close()
    base = times["streams=1"]
    print(f"{w.name} on {device}:")
    for name, t in times.items():
        print(f"    {name:32s} {t * 1e3:9.2f} ms   {base / t:5.2f}x one stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
