"""What importing costs: `vf.onnx.load` time per ONNX node, optionally against another checkout.

    python bench/onnx_load.py [--processes 5] [--loads 20] [--against OLD_CHECKOUT] [--json onnx_load.json]

The models are the PyTorch exports of `bench/onnx_models.py` (opset 17, dynamic
batch) plus the exports of the ONNX tests. Each configuration (this checkout,
and with --against another one, e.g. a `git worktree` of an older commit) loads
every model `--loads` times in each of `--processes` fresh processes, the
checkouts taking turns; the figure is the median over processes of each
process's median load, divided by the model's node count. For a model whose
graph is built at its first run (its structure depends on the fed sizes), the
load plus that first build is timed, so the figure is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, statistics, sys, time
import numpy as np
import vertexflow.onnx as vf_onnx
import onnx
paths, loads = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for path in paths:
    proto = onnx.load(path)
    feeds = {}
    for vi in proto.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 3 for d in vi.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = np.zeros(dims, dtype)
    times = []
    try:
        for _ in range(loads + 1):
            start = time.perf_counter()
            model = vf_onnx.load(path)
            if not getattr(model, "static", True):
                model.specialize(feeds)  # the graph is built at the first run: count it
            times.append(time.perf_counter() - start)
    except Exception as exc:  # an older checkout may refuse a model
        out[path] = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        continue
    out[path] = {"seconds": statistics.median(times[1:]), "nodes": len(proto.graph.node)}
print(json.dumps(out))
"""


def export_models(folder: str) -> dict[str, str]:
    """name -> .onnx path: the benchmark's models and the tests' models, exported once."""
    import torch

    sys.path.insert(0, HERE)
    sys.path.insert(0, ROOT)
    from onnx_models import export, models

    from tests.onnx.test_exports import MODELS
    from tests.onnx.test_exports import export as export_bytes

    paths = {}
    for name, (module, batch, shape) in models().items():
        paths[name] = os.path.join(folder, f"{name}.onnx")
        export(module, batch, shape, paths[name])
    torch.manual_seed(0)
    for name, (make, data) in MODELS.items():
        paths[name] = os.path.join(folder, f"{name}.onnx")
        with open(paths[name], "wb") as f:
            f.write(export_bytes(make().eval(), data(3), dynamo=False))
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--against", default=None, help="another checkout of vertexflow to compare with")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    checkouts = {"this": ROOT, **({"against": os.path.abspath(args.against)} if args.against else {})}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = export_models(folder)
        runs: dict[str, list[dict]] = {k: [] for k in checkouts}
        for p in range(args.processes):
            order = list(checkouts) if p % 2 == 0 else list(reversed(checkouts))
            for name in order:
                env = {**os.environ, "PYTHONPATH": checkouts[name]}
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(list(paths.values())), str(args.loads)],
                                      env=env, capture_output=True, text=True, check=True, cwd=folder)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = {}
    header = f"{'model':<22}{'nodes':>6}" + "".join(f"{k + ' us/node':>18}" for k in checkouts)
    print(header + ("   ratio" if args.against else ""))
    for model, path in paths.items():
        row = {}
        for name in checkouts:
            results = [r[path] for r in runs[name]]
            if "error" in results[0]:
                row[name] = {"error": results[0]["error"]}
                continue
            seconds = statistics.median(r["seconds"] for r in results)
            row[name] = {"seconds": seconds, "nodes": results[0]["nodes"],
                         "us_per_node": seconds / results[0]["nodes"] * 1e6}
        table[model] = row
        nodes = next((v["nodes"] for v in row.values() if "nodes" in v), 0)
        cells = "".join(f"{v['us_per_node']:>18.1f}" if "us_per_node" in v else f"{'refused':>18}" for v in row.values())
        ratio = ""
        if args.against and all("us_per_node" in v for v in row.values()):
            ratio = f"{row['this']['us_per_node'] / row['against']['us_per_node']:>8.2f}"
        print(f"{model:<22}{nodes:>6}{cells}{ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"processes": args.processes, "loads": args.loads, "checkouts": checkouts, "models": table}, f,
                      indent=1)
    return table


if __name__ == "__main__":
    main()
