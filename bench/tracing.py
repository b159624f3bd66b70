"""The cost of tracing: ActorExecutor on a fine-grained graph, tracer on against off, in one run.

    python bench/tracing.py [--vertices 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics

import vertexflow as vf
from vertexflow.benchmarks.families import fine_grained
from vertexflow.benchmarks.timing import interleaved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    w = fine_grained(vertices=args.vertices)
    plain = vf.ActorExecutor(w.graph, threads=2)
    traced = vf.ActorExecutor(w.graph, threads=2, tracer=vf.Tracer())
    seq_plain = vf.SequentialExecutor(w.graph)
    seq_traced = vf.SequentialExecutor(w.graph, tracer=vf.Tracer())
    runs = {
        "actor, no tracer": lambda: plain.run(w.feeds, w.fetch),
        "actor, tracer": lambda: traced.run(w.feeds, w.fetch),
        "sequential, no tracer": lambda: seq_plain.run(w.feeds, w.fetch),
        "sequential, tracer": lambda: seq_traced.run(w.feeds, w.fetch),
    }
    times = interleaved(runs, args.repeat, after_block=lambda _: (traced.tracer.clear(), seq_traced.tracer.clear()))
    plain.close()
    traced.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{w.name}: {w.vertices} vertices")
    for k, v in med.items():
        print(f"    {k:24s} {v * 1e3:8.2f} ms")
    for kind in ("actor", "sequential"):
        off, on = med[f"{kind}, no tracer"], med[f"{kind}, tracer"]
        print(f"    {kind} tracing overhead: {100 * (on / off - 1):+.1f}% "
              f"({(on - off) / w.vertices * 1e6:.2f} us per vertex)")
    return med


if __name__ == "__main__":
    main()
