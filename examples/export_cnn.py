"""Train a small CNN in PyTorch and export it to ONNX, for `vertexflow run` to serve.

    python examples/export_cnn.py [--epochs 3] [--out .]

Writes cnn.onnx (torch.onnx.export, opset 17, dynamic batch: a convolution,
batch norm, a depthwise-separable block, pooling and a linear head) and the
held-out 8x8 digits as images.npy with their labels.npy. Needs torch and
scikit-learn (pip install torch scikit-learn). Then:

    vertexflow run cnn.onnx --input x=images.npy --batch-size 64 --trace serve.html
"""

from __future__ import annotations

import argparse
import io
import os
import warnings

import numpy as np

from vertexflow.argtypes import HelpWithDefaults, count, output_folder


def build():
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 1), nn.ReLU(),  # depthwise-separable
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).to(torch.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--epochs", type=count, default=3, help="passes over the training digits")
    parser.add_argument("--out", type=output_folder, default=".", help="folder for cnn.onnx, images.npy, labels.npy")
    args = parser.parse_args(argv)
    try:
        import torch
        from sklearn.datasets import load_digits
    except ImportError as exc:
        parser.exit(2, f"export_cnn: needs torch and scikit-learn ({exc.name} is missing): "
                       "pip install torch scikit-learn\n")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    train, test = slice(0, 1400), slice(1400, None)
    torch.manual_seed(0)
    net = build()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(torch.from_numpy(images[test])).argmax(1).numpy() == labels[test]).mean()
    os.makedirs(args.out, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:2],), buf, input_names=["x"], output_names=["logits"], opset_version=17,
                          dynamo=False, dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with open(os.path.join(args.out, "cnn.onnx"), "wb") as f:
        f.write(buf.getvalue())
    np.save(os.path.join(args.out, "images.npy"), images[test])
    np.save(os.path.join(args.out, "labels.npy"), labels[test])
    print(f"torch test accuracy {accuracy:.3f} on {len(labels[test])} held-out digits; wrote cnn.onnx, images.npy, "
          f"labels.npy to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
