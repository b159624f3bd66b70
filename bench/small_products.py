"""A few rows times a transposed weight matrix, x @ W.T (an exported Linear): vertexflow's kernel against
numpy's OpenBLAS and onnxruntime's Gemm.

    python bench/small_products.py [--rows 2,4,8,16,32,64] [--weights 1] [--processes 3] [--runs 200]

For each shape (rows x inner -> rows x cols, float32, the layer shapes of the MLP
models in bench/models.py), a fresh process for each row count and each of
these forms, the processes interleaved (each form's threads spin between
calls, so forms sharing a process would slow each other):

- `numpy`: numpy's faster order of the product, x @ W.T or W @ x.T, each
  timed (what
  vertexflow computed before its kernel, `bench/matmul_layout.py`);
- `vertexflow`: `Matmul.forward` on the same operands, which runs
  `kernels/products.py` where it takes the shape and numpy otherwise;
- `onnxruntime`: a session of one Gemm (transB=1, weights packed at load),
  where onnxruntime is installed, its per-call overhead (a session run of an
  Identity) taken off.

All on the machine's cores (two threads each: OpenBLAS's, the kernels' team,
onnxruntime's intra-op pool). `--weights N` cycles through N weight matrices
of the shape, as a model's layers do (with 8 of 1-2 MB they no longer stay in
the cores' caches); 1 keeps one in cache. Medians of `--runs` calls after a
warm-up in each process; the figure is the median over fresh processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from timing import interleaved_medians

SHAPES = ((512, 1024), (1024, 512), (256, 512), (512, 512), (64, 256), (512, 10))  # (inner, cols)


def _onnxruntime(weights, rows: int):
    """A Gemm session per weight matrix and an Identity session (the per-call overhead), or None."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    inner = weights[0].shape[1]

    def session(nodes, initializers, cols):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inner])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, cols])], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    gemms = [session([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [numpy_helper.from_array(w, "w")],
                     w.shape[0]) for w in weights]
    return gemms, session([helper.make_node("Identity", ["x"], ["y"])], [], inner)


FORMS = ("numpy", "vertexflow", "onnxruntime")


def _calls(form: str, x, weights) -> dict | None:
    """The calls a form's process times on these operands (cycling through the weights), or None."""
    import numpy as np

    from vertexflow.ops.linalg import Matmul

    rows, cols = x.shape[0], weights[0].shape[0]
    at = iter(range(1 << 62))

    def weight():
        return weights[next(at) % len(weights)]

    if form == "numpy":
        out, flipped = np.empty((rows, cols), np.float32), np.empty((cols, rows), np.float32)
        return {"as_asked": lambda: np.matmul(x, weight().T, out=out),
                "transposed": lambda: np.matmul(weight(), x.T, out=flipped)}
    if form == "vertexflow":
        op = Matmul()
        return {"vertexflow": lambda: op.forward(np, x, weight().T)}
    sessions = _onnxruntime(weights, rows)
    if sessions is None:
        return None
    gemms, identity = sessions
    return {"gemm": lambda: gemms[next(at) % len(gemms)].run(None, {"x": x}),
            "call": lambda: identity.run(None, {"x": x})}


def child(form: str, rows: int, count: int, runs: int) -> dict:
    """{shape: the form's time in seconds}: numpy's faster order, onnxruntime's Gemm less its call."""
    import numpy as np

    rng = np.random.default_rng(0)
    result = {}
    for inner, cols in SHAPES:
        x = rng.normal(size=(rows, inner)).astype(np.float32)
        calls = _calls(form, x, [rng.normal(size=(cols, inner)).astype(np.float32) for _ in range(count)])
        if calls is None:
            return {}
        medians = interleaved_medians(calls, runs)
        result[f"{inner}x{cols}"] = (min(medians.values()) if form == "numpy" else
                                     medians["gemm"] - medians["call"] if form == "onnxruntime" else
                                     medians["vertexflow"])
    return result


def _median(found: list[dict], key: str) -> float:
    values = [r[key] for r in found if key in r]
    return statistics.median(values) * 1e6 if values else float("nan")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--rows", default="2,4,8,16,32,64")
    parser.add_argument("--weights", type=int, default=1, help="weight matrices cycled through (1: one, in cache)")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        form, *numbers = args.child
        print(json.dumps(child(form, *map(int, numbers))))
        return {}
    rows_list = [int(r) for r in args.rows.split(",")]
    runs: dict[tuple, list[dict]] = {(form, r): [] for form in FORMS for r in rows_list}
    for _ in range(args.processes):
        for rows in rows_list:
            for form in FORMS:
                done = subprocess.run([sys.executable, __file__, "--child", form, str(rows), str(args.weights),
                                       str(args.runs)], capture_output=True, text=True, check=True)
                runs[form, rows].append(json.loads(done.stdout))
    print(f"{args.weights} weight matrices; medians over {args.processes} processes, microseconds")
    print(f"{'rows':>5} {'inner x cols':>12} {'numpy':>8} {'vf':>8} {'ort':>8}  vf/numpy  vf/ort")
    report = {}
    for rows in rows_list:
        for inner, cols in SHAPES:
            key = f"{inner}x{cols}"

            numpy_best, ours, ort = (_median(runs[form, rows], key) for form in FORMS)
            print(f"{rows:5d} {key:>12} {numpy_best:8.1f} {ours:8.1f} {ort:8.1f}  {ours / numpy_best:7.2f}x "
                  f"{ours / ort:6.2f}x")
            report[f"{rows}x{key}"] = {"numpy_us": numpy_best, "vertexflow_us": ours, "onnxruntime_us": ort}
    return report


if __name__ == "__main__":
    main()
