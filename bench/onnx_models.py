"""PyTorch-exported multi-branch models: vertexflow's executors against onnxruntime on the same file.

    python bench/onnx_models.py [--processes 5] [--runs 7] [--json onnx_models.json] [--keep DIR]

Needs torch, onnx and onnxruntime (the test extra). Each model is written with
torch, exported by `torch.onnx.export` (opset 17, dynamic batch) and measured
by vf.benchmark on the file: fresh processes, interleaved, results checked
equal before timing. The target: vertexflow's best configuration within 1.0x of
onnxruntime's best mode. Where it is not, the table below each model says
where the time goes, per op type: vertexflow's tape (a traced run, one
process) against onnxruntime's own profiler (ORT_SEQUENTIAL, same process).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import warnings

import numpy as np

import vertexflow as vf
from vertexflow.benchmarks.workload import from_onnx

EXECUTORS = ("sequential", "actor", "sequential-fused", "actor-fused")


def models():
    """name -> (module, batch, input width or image shape): the models of the ONNX target."""
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        """Four MLP members averaged (the issue's 4-member ensemble, batch 64)."""

        def __init__(self, members=4, d=256, h=512, out=10):
            super().__init__()
            self.members = nn.ModuleList(
                nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))
                for _ in range(members))

        def forward(self, x):
            return sum(m(x) for m in self.members) / len(self.members)

    class ThreeBranch(nn.Module):
        """GELU, ReLU and sigmoid members summed (the issue's three-branch model, batch 96)."""

        def __init__(self, d=512, h=1024):
            super().__init__()
            self.branches = nn.ModuleList(
                nn.Sequential(nn.Linear(d, h), act, nn.Linear(h, d)) for act in (nn.GELU(), nn.ReLU(), nn.Sigmoid()))

        def forward(self, x):
            return sum(b(x) for b in self.branches)

    class Inception(nn.Module):
        """An inception-style block: 1x1, 3x3, 5x5 and pooled branches concatenated, then a head."""

        def __init__(self, c=16, w=16):
            super().__init__()
            self.b1 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU())
            self.b3 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU())
            self.b5 = nn.Sequential(nn.Conv2d(c, w, 1), nn.ReLU(), nn.Conv2d(w, w, 5, padding=2), nn.ReLU())
            self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c, w, 1), nn.ReLU())
            self.head = nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), nn.Linear(4 * w, 10))

        def forward(self, x):
            return self.head(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1))

    torch.manual_seed(0)
    return {
        "ensemble4-mlp": (Ensemble().eval(), 64, (256,)),
        "three-branch-gelu": (ThreeBranch().eval(), 96, (512,)),
        "inception-block": (Inception().eval(), 32, (16, 16, 16)),
    }


def export(module, batch: int, shape: tuple, path: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(batch, *shape),), path, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def per_op(path: str, batch: int, steps: int = 30) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per step by op type: vertexflow's tape (traced) and onnxruntime's profiler."""
    import onnxruntime as ort

    workload = from_onnx(path, batch=batch)
    feeds = {(k if isinstance(k, str) else k.name): np.asarray(v) for k, v in workload.feeds.items()}
    tape = vf.SequentialExecutor(workload.graph)
    for _ in range(10):
        tape.run(workload.feeds, workload.fetch)
    with vf.trace() as tracer:
        for _ in range(steps):
            tape.run(workload.feeds, workload.fetch)
    ours: dict[str, float] = collections.defaultdict(float)
    for span in tracer.spans:
        ours[span.op] += span.duration * 1e3 / steps

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(10 + steps):
        session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    theirs: dict[str, float] = collections.defaultdict(float)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = runs[10]  # the warm-up runs' kernels are left out
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= timed_from:
            theirs[e["args"]["op_name"]] += e["dur"] / 1e3 / steps  # microseconds
    return dict(ours), dict(theirs)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json")
    parser.add_argument("--keep", help="write the exported .onnx files here (default: a temporary folder)")
    args = parser.parse_args(argv)
    folder = args.keep or tempfile.mkdtemp(prefix="vf-onnx-bench-")
    os.makedirs(folder, exist_ok=True)
    figures, rows = {}, []
    for name, (module, batch, shape) in models().items():
        path = os.path.join(folder, f"{name}.onnx")
        export(module, batch, shape, path)
        report = vf.benchmark(path, batch=batch, executors=EXECUTORS, processes=args.processes, runs=args.runs)
        print(report, flush=True)
        ours = min((r for r in report.results if r.executor in EXECUTORS), key=lambda r: r.median_s)
        ort_best = min((r for r in report.results if r.executor.startswith("onnxruntime")), key=lambda r: r.median_s)
        ratio = ours.median_s / ort_best.median_s
        rows.append((f"{name} (batch {batch})", ours.executor, ours.median_s, ort_best.executor, ort_best.median_s,
                     ratio))
        mine, theirs = per_op(path, batch)
        print(f"\n{name}: milliseconds per step by op (vertexflow's tape, traced; onnxruntime's profiler)")
        for op in sorted(set(mine) | set(theirs), key=lambda o: -max(mine.get(o, 0), theirs.get(o, 0))):
            print(f"  {op:<20} vertexflow {mine.get(op, 0):7.3f}   onnxruntime {theirs.get(op, 0):7.3f}")
        print(flush=True)
        figures[name] = {"report": report.as_dict(), "per_op_ms": {"vertexflow": mine, "onnxruntime": theirs}}

    print(f"{'model':<30}{'vertexflow best':>28}{'onnxruntime best':>34}{'ratio':>8}  target <= 1.0x")
    for model, ex, ms, ort_ex, ort_ms, ratio in rows:
        print(f"{model:<30}{ex:>18} {ms * 1e3:7.2f} ms{ort_ex:>22} {ort_ms * 1e3:7.2f} ms{ratio:>7.2f}x  "
              f"{'met' if ratio <= 1.0 else 'MISSED'}")
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    if pinned:
        print(f"\nOPENBLAS_CORETYPE={pinned}: numpy's matrix products run on OpenBLAS's {pinned} kernels here; "
              "onnxruntime's run on its own")
    print(f"median ratio {statistics.median(r[-1] for r in rows):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": figures, "table": [dict(zip(("model", "vertexflow", "vertexflow_s", "onnxruntime",
                                                               "onnxruntime_s", "ratio"), r)) for r in rows]},
                      f, indent=1)
    return figures


if __name__ == "__main__":
    main()
