"""A multilayer perceptron classifying handwritten digits: 784 (or 64) -> 250 -> 100 -> 10, ReLU, RMSProp.

    python examples/mlp_digits.py                      # scikit-learn's bundled 8x8 digits
    python examples/mlp_digits.py --train-images train-images-idx3-ubyte.gz \\
        --train-labels train-labels-idx1-ubyte.gz --test-images t10k-images-idx3-ubyte.gz \\
        --test-labels t10k-labels-idx1-ubyte.gz        # MNIST / Fashion-MNIST IDX files
"""

from __future__ import annotations

import sys

import numpy as np

import vertexflow as vf
from vertexflow.argtypes import input_file

try:
    from examples._common import parser
except ImportError:  # run as a script from examples/
    from _common import parser


def load(args):
    if args.train_images:
        xtr = vf.data.load_idx(args.train_images).reshape(-1, 784).astype(np.float32) / 255.0
        ytr = vf.data.load_idx(args.train_labels).astype(np.int64)
        xte = vf.data.load_idx(args.test_images).reshape(-1, 784).astype(np.float32) / 255.0
        yte = vf.data.load_idx(args.test_labels).astype(np.int64)
        return xtr, ytr, xte, yte
    xs, ys = vf.data.load_digits()
    return vf.data.train_test_split(xs, ys, test=0.2, seed=args.seed)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], epochs=30, batch_size=32, lr=1e-3)
    idx = p.add_argument_group("MNIST or Fashion-MNIST instead of the bundled 8x8 digits (give all four)")
    for name in ("train-images", "train-labels", "test-images", "test-labels"):
        idx.add_argument(f"--{name}", type=input_file, default=None, metavar="FILE.idx[.gz]",
                         help=f"the {name.replace('-', ' ')} in IDX format")
    args = p.parse_args(argv)
    files = ("train_images", "train_labels", "test_images", "test_labels")
    missing = [name for name in files if not getattr(args, name)]
    if 0 < len(missing) < len(files):
        p.error("MNIST needs all four IDX files; missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    xtr, ytr, xte, yte = load(args)
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]
    features = xtr.shape[1]

    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, features))
    y = g.input("y", shape=(None,), dtype="int64")
    model = vf.nn.Sequential(
        vf.nn.Linear(features, 250, "relu", seed=args.seed, name="hidden1"),
        vf.nn.Linear(250, 100, "relu", seed=args.seed + 1, name="hidden2"),
        vf.nn.Linear(100, 10, seed=args.seed + 2, name="output"),
    )
    logits = model(x)
    loss = vf.cross_entropy(logits, y, name="loss")
    optimizer = vf.optim.RMSProp(model.parameters(), lr=args.lr)
    history = vf.nn.fit(loss, optimizer, x, y, (xtr, ytr), epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, executor=args.executor, validation=(xte, yte), output=logits,
                        mode=model.mode, progress=not args.quiet)
    accuracy = history.val_accuracy[-1]
    print(f"test accuracy after {args.epochs} epochs: {accuracy:.4f} ({len(xte)} held-out samples)")
    if args.save:
        vf.nn.save(args.save, model.parameters(), optimizer)
        print(f"saved to {args.save}")
    return {"test_accuracy": accuracy, "loss": history.loss}


if __name__ == "__main__":
    main(sys.argv[1:])
