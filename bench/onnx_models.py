"""Models exported from PyTorch: vertexflow's executors against onnxruntime's two modes and torch eager.

    python bench/onnx_models.py [--batches 1,8,64] [--models NAME,...] [--processes 4] [--runs 30]
                                [--unset-openblas] [--json onnx_models.json] [--keep DIR]

Needs torch, onnx and onnxruntime (the test extra). Each model of
`bench/models.py` is exported by `torch.onnx.export` (opset 17, dynamic batch)
and timed at each batch size in these configurations, each in fresh processes
(one process per configuration and round, the order rotating each round),
`--runs` calls after a warm-up (the actor executor's calibration included),
the median of each process taken:

    sequential, actor        vertexflow (vf.onnx.load, default settings)
    ort, ort-parallel        onnxruntime's ORT_SEQUENTIAL and ORT_PARALLEL sessions
    torch                    the torch module itself, eager, torch.no_grad(), 2 threads

The figure per configuration is the median over processes, with their range.
The target (issue 24): vertexflow's best at most 1.5x onnxruntime's best, at
most 1.0x for the MLP models; where it is missed, the per-op table below the
model says where each side's time goes (vertexflow's traced tape against
onnxruntime's own profiler, one process each). `--unset-openblas` drops
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the children's environment (what
a user's machine does); every run says which BLAS kernels each child used
(threadpoolctl).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("sequential", "actor", "ort", "ort-parallel", "torch")
# Input shapes (batch left out), as bench/models.py's zoo() gives them: the children that time vertexflow
# and onnxruntime read them from here and never import torch, so its threads are not in their process.
SHAPES = {"mobilenet-block": (3, 32, 32), "unet": (3, 32, 32), "audio-1d": (1, 2048), "tiny-vit": (3, 32, 32),
          "mixer": (64, 64), "three-branch": (512,), "ensemble": (256,), "inception": (16, 16, 16)}
VERTEXFLOW = ("sequential", "actor")
ORT = ("ort", "ort-parallel")


def _feeds(shape, batch):
    import numpy as np

    return np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)


def child(name: str, path: str, batch: int, config: str, runs: int) -> dict:
    """One configuration in this (fresh) process: {"median_s": ..., "blas": ...}."""
    import time

    import threadpoolctl

    x = _feeds(SHAPES[name], batch)
    warmup = 15
    if config in VERTEXFLOW:
        import vertexflow as vf
        from vertexflow.actors.schedule import Choice

        model = vf.onnx.load(path).specialize({"x": x})
        executor = model.executor(config)
        outputs = model.outputs
        unit = lambda: executor.run({"x": x}, outputs)  # noqa: E731
        warmup = max(warmup, Choice.calls_to_decide() + 5)
    elif config in ORT:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if config == "ort-parallel":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        unit = lambda: session.run(None, {"x": x})  # noqa: E731
    else:
        import torch

        sys.path.insert(0, HERE)
        import models

        module = models.zoo()[name][0]
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
        tensor = torch.from_numpy(x)

        def unit():
            with torch.no_grad():
                return module(tensor)
    for _ in range(warmup):
        unit()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        unit()
        times.append(time.perf_counter() - start)
    blas = [{k: lib.get(k) for k in ("internal_api", "architecture", "num_threads")}
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    return {"median_s": statistics.median(times), "blas": blas}


def scaled(profiles: tuple[dict, dict], *untraced_s: float) -> tuple[tuple[dict, dict], tuple[float, float]]:
    """Each profile's milliseconds scaled so they add up to its untraced median, and how much longer the
    profiled run took: onnxruntime's profiler slowed a batch-8 ensemble 5x, which made its ops look 5x
    dearer than the run being compared. The correction is uniform; a profiler's cost falls more on
    small ops, so theirs stay somewhat overstated."""
    out, slowed = [], []
    for profile, seconds in zip(profiles, untraced_s):
        total = sum(profile.values())
        factor = seconds * 1e3 / total if total > 0 else 1.0
        out.append({op: ms * factor for op, ms in profile.items()})
        slowed.append(1 / factor)
    return (out[0], out[1]), (slowed[0], slowed[1])


def per_op(name: str, path: str, batch: int, steps: int = 20) -> tuple[dict, dict]:
    """Milliseconds per step by op type: vertexflow's tape (traced) and onnxruntime's profiler."""
    import onnxruntime as ort

    import vertexflow as vf

    x = _feeds(SHAPES[name], batch)
    model = vf.onnx.load(path).specialize({"x": x})
    tape = model.executor("sequential")
    for _ in range(10):
        tape.run({"x": x}, model.outputs)
    with vf.trace() as tracer:
        for _ in range(steps):
            tape.run({"x": x}, model.outputs)
    ours: dict[str, float] = collections.defaultdict(float)
    for span in tracer.spans:  # a fused group under its own name (the product with its epilogue), not its last op's
        ours[span.fused or span.op] += span.duration * 1e3 / steps
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(10 + steps):
        session.run(None, {"x": x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    theirs: dict[str, float] = collections.defaultdict(float)
    started = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    timed_from = started[10]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= timed_from:
            theirs[e["args"]["op_name"]] += e["dur"] / 1e3 / steps
    return dict(ours), dict(theirs)


def _environment(unset: bool) -> dict:
    env = dict(os.environ)
    if unset:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--models", default="", help="comma-separated names from bench/models.py (default: all)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--unset-openblas", action="store_true",
                        help="children run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE")
    parser.add_argument("--no-per-op", action="store_true", help="skip the per-op tables of missed targets")
    parser.add_argument("--json")
    parser.add_argument("--keep", help="write the exported .onnx files here (default: a temporary folder)")
    parser.add_argument("--child", nargs=5, metavar=("NAME", "PATH", "BATCH", "CONFIG", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, path, batch, config, runs = args.child
        print(json.dumps(child(name, path, int(batch), config, int(runs))))
        return {}

    sys.path.insert(0, HERE)
    import models

    zoo = models.zoo()
    assert {k: v[1] for k, v in zoo.items()} == SHAPES, "SHAPES must follow bench/models.py"
    names = [n for n in args.models.split(",") if n] or list(zoo)
    unknown = [n for n in names if n not in zoo]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(zoo)}")
    batches = [int(b) for b in args.batches.split(",")]
    folder = args.keep or tempfile.mkdtemp(prefix="vf-onnx-bench-")
    os.makedirs(folder, exist_ok=True)
    env = _environment(args.unset_openblas)
    print(f"OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={env.get('OPENBLAS_L2_SIZE', '(unset)')} in the children", flush=True)
    rows, figures, kernels = [], {}, set()
    for name in names:
        module, shape = zoo[name]
        path = os.path.join(folder, f"{name}.onnx")
        models.export(module, shape, path)
        for batch in batches:
            medians: dict[str, list[float]] = {c: [] for c in CONFIGS}
            for r in range(args.processes):
                order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
                for config in order:
                    out = subprocess.run([sys.executable, __file__, "--child", name, path, str(batch), config,
                                          str(args.runs)], capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        raise SystemExit(f"{name} batch {batch} {config} failed:\n{out.stderr[-3000:]}")
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    medians[config].append(result["median_s"])
                    kernels.update(f"{b['internal_api']} {b['architecture']}, {b['num_threads']} threads"
                                   for b in result["blas"])
            med = {c: statistics.median(v) for c, v in medians.items()}
            ours = min(VERTEXFLOW, key=med.get)
            theirs = min(ORT, key=med.get)
            ratio = med[ours] / med[theirs]
            target = 1.0 if name in models.MLP_KINDS else 1.5
            cells = "  ".join(f"{c} {med[c] * 1e3:8.3f} ms [{min(medians[c]) * 1e3:.2f}-{max(medians[c]) * 1e3:.2f}]"
                              for c in CONFIGS)
            print(f"{name:<16} batch {batch:<3} {cells}", flush=True)
            rows.append((name, batch, ours, med[ours], theirs, med[theirs], med["torch"], ratio, target))
            figures[f"{name}/{batch}"] = {"medians_s": medians}
            if ratio > target and not args.no_per_op:
                (mine, onnxruntime), slowed = scaled(per_op(name, path, batch), med["sequential"], med["ort"])
                print("  missed: milliseconds per step by op (vertexflow's traced tape, onnxruntime's profiler; each "
                      f"scaled to its untraced median: the profiled runs took {slowed[0]:.1f}x and {slowed[1]:.1f}x "
                      "as long)")
                for op in sorted(set(mine) | set(onnxruntime), key=lambda o: -max(mine.get(o, 0),
                                                                                   onnxruntime.get(o, 0)))[:10]:
                    print(f"    {op:<40} vertexflow {mine.get(op, 0):7.3f}   onnxruntime {onnxruntime.get(op, 0):7.3f}")
                figures[f"{name}/{batch}"]["per_op_ms"] = {"vertexflow": mine, "onnxruntime": onnxruntime}

    print(f"\n{'model':<16}{'batch':>6}{'vertexflow best':>26}{'onnxruntime best':>28}{'torch':>12}"
          f"{'ratio':>9}  target")
    for name, batch, ours, ours_s, theirs, theirs_s, torch_s, ratio, target in rows:
        verdict = "met" if ratio <= target else "MISSED"
        print(f"{name:<16}{batch:>6}{ours:>14} {ours_s * 1e3:8.3f} ms{theirs:>16} {theirs_s * 1e3:8.3f} ms"
              f"{torch_s * 1e3:9.3f} ms{ratio:>8.3f}x  <= {target}x {verdict}")  # 1.504x, not "1.50x MISSED"
    print("BLAS in the children: " + "; ".join(sorted(kernels)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [dict(zip(("model", "batch", "vertexflow", "vertexflow_s", "onnxruntime",
                                          "onnxruntime_s", "torch_s", "ratio", "target"), r)) for r in rows],
                       "figures": figures, "blas": sorted(kernels),
                       "openblas_env": {k: env.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}},
                      f, indent=1)
    return figures


if __name__ == "__main__":
    main()
