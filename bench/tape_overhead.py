"""The compiled tape's cost above the numpy calls it makes: a chain of cheap vertices on small arrays.

    python bench/tape_overhead.py [--vertices 2000] [--size 8] [--processes 6] [--runs 30]

The graph is a chain of `--vertices` elementwise vertices (multiply, add,
tanh, subtract by a constant, in turn) on a `--size` x `--size` float64 array:
each numpy call takes about a microsecond, so what the executor adds per
vertex shows. Three configurations, each in fresh processes, interleaved
(the order rotating), medians of `--runs` calls after a warm-up:

- `tape`: `SequentialExecutor.run` (feeds checked, the compiled program, the result handed out);
- `straight`: the same numpy calls on the same constant arrays, written as straight-line
  Python (one line per call, in place after the first, as the tape writes them): the floor;
- `loop`: the same calls (in place after the first) from a list of (function, arguments) in a Python loop.

Overhead per vertex = (tape - straight) / vertices, with the spread of the
processes' medians. The target: at most 1 us a vertex. A negative figure
would be a measurement error and is reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

CONFIGS = ("tape", "straight", "loop")


def build(vertices: int, size: int):
    import vertexflow as vf

    g = vf.Graph("chain")
    x = g.input("x", shape=(size, size), dtype="float64")
    h = x
    for i in range(vertices):
        k = i % 4
        h = h * 1.0001 if k == 0 else h + 0.0001 if k == 1 else vf.tanh(h) if k == 2 else h - 0.0001
    calls = []
    for node in vf.SequentialExecutor(g).tape([h]).order:
        if node.kind == "op":
            consts = [i.value for i in node.inputs if i.kind == "const"]
            calls.append((getattr(np, node.op.ufunc), tuple(consts)))
    feeds = {x: np.random.default_rng(0).normal(size=(size, size))}
    return g, h, feeds, calls


def straight_line(calls):
    """The calls as straight-line Python, `a = f1(a, c1, out=a)` one line each (in place after the
    first, the feed left alone), the constants local variables."""
    namespace = {}
    constants = []
    lines = []
    for k, (fn, args) in enumerate(calls):
        namespace[f"f{k}"] = fn
        names = []
        for arg in args:
            names.append(f"c{len(constants)}")
            constants.append(arg)
        out = ", out=a" if k else ""  # in place after the first call, as the compiled tape writes
        lines.append(f"    a = f{k}({', '.join(['a', *names])}{out})")
    head = f"def run(a, {', '.join(f'c{j}' for j in range(len(constants)))}):"
    exec("\n".join([head, *lines, "    return a"]), namespace)  # noqa: S102 - our own benchmark code
    return lambda a: namespace["run"](a, *constants)


def child(config: str, vertices: int, size: int, runs: int) -> float:
    import vertexflow as vf

    g, h, feeds, calls = build(vertices, size)
    (x,) = feeds
    a0 = feeds[x]
    if config == "tape":
        seq = vf.SequentialExecutor(g)
        unit = lambda: seq.run(feeds, h)  # noqa: E731
    elif config == "straight":
        run = straight_line(calls)
        unit = lambda: run(a0)  # noqa: E731
    else:
        first, rest = calls[0], calls[1:]

        def unit():
            a = first[0](a0, *first[1])
            for fn, args in rest:
                a = fn(a, *args, out=a)
            return a
    for _ in range(20):
        unit()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        unit()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--vertices", type=int, default=2000)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.vertices, args.size, args.runs)))
        return {}
    medians: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.processes):
        order = CONFIGS[r % 3:] + CONFIGS[:r % 3]
        for config in order:
            out = subprocess.run([sys.executable, __file__, "--child", config, "--vertices", str(args.vertices),
                                  "--size", str(args.size), "--runs", str(args.runs)],
                                 capture_output=True, text=True, check=True)
            medians[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    n = args.vertices
    for config in CONFIGS:
        m = medians[config]
        print(f"{config:<9} median {statistics.median(m) * 1e3:7.3f} ms  (processes: "
              f"{min(m) * 1e3:.3f}-{max(m) * 1e3:.3f} ms)")
    tape, floor, loop = (statistics.median(medians[c]) for c in CONFIGS)
    per_vertex = (tape - floor) / n * 1e6
    pairs = sorted((t - f) / n * 1e6 for t, f in zip(medians["tape"], medians["straight"]))
    verdict = "INVALID (negative: a measurement error)" if per_vertex < 0 else (
        "met" if per_vertex <= 1.0 else "MISSED")
    print(f"\ntape above the straight-line numpy calls: {per_vertex:.2f} us a vertex "
          f"(process pairs {pairs[0]:.2f}-{pairs[-1]:.2f}); target <= 1 us: {verdict}")
    print(f"(a Python loop over the same calls costs {(loop - floor) / n * 1e6:.2f} us a vertex above straight-line)")
    return {"medians_s": medians, "overhead_us_per_vertex": per_vertex}


if __name__ == "__main__":
    main()
