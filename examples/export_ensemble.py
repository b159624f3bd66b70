"""Export a 4-member MLP ensemble from PyTorch to ONNX, for `vertexflow bench` to time against onnxruntime.

    python examples/export_ensemble.py [--out .]

Writes ensemble.onnx (torch.onnx.export, opset 17, dynamic batch): four MLPs
256 -> 512 -> 512 -> 10 with ReLU, their outputs averaged. The members are
independent branches, which the actor executor may run side by side. The
weights are PyTorch's seeded initialisation (nothing is trained: the benchmark
times the arithmetic). Needs torch (pip install torch). Then:

    vertexflow bench ensemble.onnx --batch-size 64
"""

from __future__ import annotations

import argparse
import io
import os
import warnings

from vertexflow.argtypes import HelpWithDefaults, count, output_folder


def build(members: int = 4, features: int = 256, hidden: int = 512, classes: int = 10):
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(
                nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                              nn.Linear(hidden, classes))
                for _ in range(members))

        def forward(self, x):
            return sum(m(x) for m in self.members) / len(self.members)

    torch.manual_seed(0)
    return Ensemble().eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--members", type=count, default=4, help="MLPs in the ensemble")
    parser.add_argument("--out", type=output_folder, default=".", help="folder for ensemble.onnx")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        parser.exit(2, "export_ensemble: needs torch: pip install torch\n")
    net = build(args.members)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 256),), buf, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ensemble.onnx")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    print(f"wrote {os.path.abspath(path)}: {args.members} MLPs 256 -> 512 -> 512 -> 10, averaged (input x, "
          "batch dynamic)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
