"""The convolutions of the exported models: vertexflow's direct kernel against the per-image columns with
OpenBLAS it replaced, and onnxruntime's Conv.

    python bench/convolutions.py [--batch 8] [--cores 1] [--processes 3] [--runs 50]

For each shape (float32, batch `--batch`, the layers of bench/models.py and two
wider ones), a fresh process for each of these forms, the processes
interleaved:

- `direct`: `kernels/direct_conv.py`, the kernel `Conv2d` runs for these shapes;
- `columns`: `kernels/im2col.py`, each image's columns built in cache and
  multiplied by OpenBLAS's sgemm (what vertexflow ran before the direct kernel);
- `onnxruntime`: a session of one Conv (weights packed at load), where
  onnxruntime is installed, its per-call overhead (a session run of an
  Identity) taken off.

`--cores 1` pins each child to one core (its affinity, which the kernels'
team and OpenBLAS follow, and onnxruntime's intra-op threads set to 1): the
kernels' own speed. `--cores 2` gives them the machine's two. Medians of
`--runs` calls after a warm-up in each process; the figure is the median over
fresh processes, in microseconds and GFLOP/s (2 x multiply-adds / time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from timing import interleaved_medians

# (in channels, out channels, kernel, stride, padding, input height, input width)
SHAPES = (
    (3, 16, (3, 3), (1, 1), (1, 1), 32, 32),  # the UNet's first
    (16, 16, (3, 3), (1, 1), (1, 1), 32, 32),  # the UNet's
    (16, 32, (3, 3), (1, 1), (1, 1), 16, 16),
    (32, 32, (3, 3), (1, 1), (1, 1), 16, 16),
    (32, 16, (3, 3), (1, 1), (1, 1), 32, 32),
    (16, 16, (3, 3), (1, 1), (1, 1), 16, 16),  # the inception block's
    (16, 16, (5, 5), (1, 1), (2, 2), 16, 16),
    (16, 32, (1, 9), (1, 2), (0, 4), 1, 1024),  # the 1-D model's second
    (64, 64, (3, 3), (1, 1), (1, 1), 32, 32),  # wider
    (128, 128, (3, 3), (1, 1), (1, 1), 16, 16),
)
FORMS = ("direct", "columns", "onnxruntime")


def _key(shape) -> str:
    cin, cout, (kh, kw), (sh, sw), _, h, w = shape
    return f"{cin}->{cout} {kh}x{kw}/{sh}x{sw} at {h}x{w}"


def _flops(shape, batch: int) -> float:
    cin, cout, (kh, kw), (sh, sw), (ph, pw), h, w = shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return 2.0 * batch * cout * oh * ow * cin * kh * kw


def _onnxruntime(shape, weight, batch: int, threads: int):
    """A Conv session and an Identity session (the per-call overhead), or None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    cin, _, kernel, stride, padding, h, w = shape

    def session(nodes, initializers):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [batch, cin, h, w])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    conv = session([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=list(kernel), strides=list(stride),
                                     pads=[padding[0], padding[1], padding[0], padding[1]])],
                   [numpy_helper.from_array(weight, "w")])
    return conv, session([helper.make_node("Identity", ["x"], ["y"])], [])


def _calls(form: str, shape, batch: int, cores: int, rng) -> dict | None:
    """The calls a form's process times for this shape, or None (onnxruntime not installed)."""
    import numpy as np

    from vertexflow.kernels import direct_conv, im2col

    cin, cout, kernel, stride, padding, h, w = shape
    x = rng.normal(size=(batch, cin, h, w)).astype(np.float32)
    weight = rng.normal(size=(cout, cin, *kernel)).astype(np.float32)
    out = im2col.conv2d(x, weight, stride, padding, (1, 1), 1)
    if form == "direct":
        return {"run": lambda: direct_conv.conv2d(x, weight, stride, padding, (1, 1), out)}
    if form == "columns":
        return {"run": lambda: im2col.conv2d(x, weight, stride, padding, (1, 1), 1, out)}
    sessions = _onnxruntime(shape, weight, batch, cores)
    if sessions is None:
        return None
    conv, identity = sessions
    return {"run": lambda: conv.run(None, {"x": x}), "call": lambda: identity.run(None, {"x": x})}


def child(form: str, batch: int, cores: int, runs: int) -> dict:
    """{shape: the form's time in seconds} (onnxruntime's less its call overhead)."""
    if cores == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import numpy as np

    rng = np.random.default_rng(0)
    result = {}
    for shape in SHAPES:
        calls = _calls(form, shape, batch, cores, rng)
        if calls is None:
            return {}
        medians = interleaved_medians(calls, runs, warmup=10)
        result[_key(shape)] = medians["run"] - medians.get("call", 0.0)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cores", type=int, default=1, choices=(1, 2))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        form, *numbers = args.child
        print(json.dumps(child(form, *map(int, numbers))))
        return {}
    found: dict[str, list[dict]] = {form: [] for form in FORMS}
    for _ in range(args.processes):
        for form in FORMS:
            done = subprocess.run([sys.executable, __file__, "--child", form, str(args.batch), str(args.cores),
                                   str(args.runs)], capture_output=True, text=True, check=True)
            found[form].append(json.loads(done.stdout))
    print(f"batch {args.batch}, {args.cores} core(s) a process; medians over {args.processes} processes: "
          "microseconds (GFLOP/s)")
    print(f"{'shape':>28} {'direct':>14} {'columns':>14} {'onnxruntime':>14}  columns/direct")
    report = {}
    for shape in SHAPES:
        key, flops = _key(shape), _flops(shape, args.batch)
        us = {form: (statistics.median(r[key] for r in found[form]) * 1e6 if any(key in r for r in found[form])
                     else float("nan")) for form in FORMS}
        cells = " ".join(f"{us[form]:7.0f} ({flops / us[form] / 1e3:4.0f})" for form in FORMS)
        print(f"{key:>28} {cells}  {us['columns'] / us['direct']:6.2f}x")
        report[key] = {f"{form}_us": us[form] for form in FORMS}
    return report


if __name__ == "__main__":
    main()
