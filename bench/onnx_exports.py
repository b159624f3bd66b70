"""Which PyTorch exports vertexflow imports: every model kind of the ONNX tests, both exporters,
opsets 13 and 17, dynamic batch or fixed, against torch and onnxruntime.

    python bench/onnx_exports.py [--tolerance 1e-4] [--json onnx_exports.json]

A slow check rather than a benchmark (a minute or two): for each combination it
exports with `torch.onnx.export`, loads with `vf.onnx.load`, runs two batch sizes
(one for a fixed batch) on both executors, and compares with torch and with
onnxruntime. Each line says loaded-and-equal, refused (with vertexflow's reason),
wrong (the largest difference), or that torch itself could not export it.
Needs the test extra (torch, onnxruntime, onnxscript for the dynamo exporter).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kinds() -> dict:
    """name -> (make module, make input of a batch size): the tests' models plus an MLP and a CNN."""
    import torch
    from torch import nn

    sys.path.insert(0, ROOT)
    from tests.onnx.test_exports import MODELS

    def mlp():
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5), nn.LogSoftmax(dim=-1))

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3))

    return {"mlp": (mlp, lambda b: torch.randn(b, 20)), "cnn": (cnn, lambda b: torch.randn(b, 1, 10, 10)), **MODELS}


def export(net, example, dynamo: bool, opset: int, dynamic: bool) -> bytes:
    import torch

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=2, max=1024)},) if dynamic else None
            program = torch.onnx.export(net, (example,), input_names=["x"], output_names=["y"], dynamo=True,
                                        opset_version=opset, verbose=False, dynamic_shapes=shapes)
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(net, (example,), buf, input_names=["x"], output_names=["y"], dynamo=False, opset_version=opset,
                          dynamic_axes={"x": {0: "batch"}} if dynamic else None)
        return buf.getvalue()


def check(make, data, dynamo: bool, opset: int, dynamic: bool, tolerance: float) -> tuple[str, str]:
    import onnxruntime as ort
    import torch

    from vertexflow import onnx as vf_onnx

    torch.manual_seed(0)
    net = make().eval()
    try:
        model_bytes = export(net, data(3), dynamo, opset, dynamic)
    except Exception as exc:  # noqa: BLE001 - torch's exporter refusing is a result to report
        return "export failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    try:
        model = vf_onnx.load(model_bytes)
    except vf_onnx.UnsupportedOnnxError as exc:
        return "refused", str(exc)[:200]
    worst = 0.0
    with model:
        for batch in (3, 5) if dynamic else (3,):
            x = data(batch)
            with torch.no_grad():
                want = net(x).numpy()
            reference = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
            for executor in ("sequential", "actor"):
                (got,) = model.run({"x": x.numpy()}, executor=executor)
                worst = max(worst, float(np.abs(got - want).max()), float(np.abs(got - reference).max()))
    return ("ok" if worst <= tolerance else "wrong"), f"max difference {worst:.2g}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import importlib.util

    exporters = [False] + ([True] if importlib.util.find_spec("onnxscript") else [])
    results, counts = [], collections.Counter()
    for name, (make, data) in kinds().items():
        for dynamo in exporters:
            for opset in (13, 17):
                for dynamic in (True, False):
                    outcome, detail = check(make, data, dynamo, opset, dynamic, args.tolerance)
                    tag = f"{name} {'dynamo' if dynamo else 'torchscript'} opset {opset} {'dynamic' if dynamic else 'fixed'}"
                    counts[outcome] += 1
                    results.append({"model": tag, "outcome": outcome, "detail": detail})
                    print(f"{tag:<58} {outcome:<14} {detail}", flush=True)
    exported = sum(v for k, v in counts.items() if k != "export failed")
    print(f"\n{counts['ok']} of {exported} exports load and match torch and onnxruntime within {args.tolerance:g}; "
          f"{counts['refused']} refused, {counts['wrong']} wrong; torch could not export {counts['export failed']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tolerance": args.tolerance, "counts": dict(counts), "results": results}, f, indent=1)
    return dict(counts)


if __name__ == "__main__":
    main()
