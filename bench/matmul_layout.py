"""A matrix product in its two orders: x @ W.T as numpy computes it, and computed transposed (W @ x.T).

    python bench/matmul_layout.py [--rows 1,2,4,8,16,32,64,128,256,512] [--processes 3] [--runs 200]

For each shape (rows x inner -> rows x cols, float32, the layer shapes of the
MLP models in bench/models.py), `rows_major` times `np.matmul(x, W.T, out=)`
into a row-major output, the product as an exported Linear (`Gemm` with
transB) asks for it, and `transposed` times `np.matmul(W, x.T, out=)` into a
row-major (cols, rows) buffer: the same product, its value in column-major
order, which is what `vertexflow.ops.linalg.Matmul` computes when
`computes_transposed(rows, cols)` says so. Each process times both forms,
interleaved, medians of `--runs` calls after a warm-up; the figure is the
median over fresh processes. The ratio rows_major / transposed above 1 means
computing transposed is faster.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys

from timing import interleaved_medians

SHAPES = ((512, 1024), (1024, 512), (256, 512), (512, 512), (64, 256), (512, 10))  # (inner, cols)


def child(rows: int, runs: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    result = {}
    for inner, cols in SHAPES:
        x = rng.normal(size=(rows, inner)).astype(np.float32)
        w = rng.normal(size=(cols, inner)).astype(np.float32)
        out, flipped = np.empty((rows, cols), np.float32), np.empty((cols, rows), np.float32)
        forms = {"rows_major": functools.partial(np.matmul, x, w.T, out=out),
                 "transposed": functools.partial(np.matmul, w, x.T, out=flipped)}
        result[f"{inner}x{cols}"] = interleaved_medians(forms, runs)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128,256,512")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return {}
    from vertexflow.ops.linalg import computes_transposed

    rows_list = [int(r) for r in args.rows.split(",")]
    runs: dict[int, list[dict]] = {r: [] for r in rows_list}
    for _ in range(args.processes):
        for rows in rows_list:
            done = subprocess.run([sys.executable, __file__, "--child", str(rows), str(args.runs)],
                                  capture_output=True, text=True, check=True)
            runs[rows].append(json.loads(done.stdout))
    print(f"{'rows':>5} {'inner x cols':>12} {'x @ W.T':>10} {'W @ x.T':>10} {'ratio':>6}  vertexflow computes")
    report = {}
    for rows in rows_list:
        for inner, cols in SHAPES:
            key = f"{inner}x{cols}"
            a = statistics.median(r[key]["rows_major"] for r in runs[rows]) * 1e6
            b = statistics.median(r[key]["transposed"] for r in runs[rows]) * 1e6
            form = "transposed" if computes_transposed(rows, cols) else "as asked"
            print(f"{rows:5d} {key:>12} {a:8.1f}us {b:8.1f}us {a / b:5.2f}x  {form}")
            report[f"{rows}x{key}"] = {"rows_major_us": a, "transposed_us": b}
    return report


if __name__ == "__main__":
    main()
