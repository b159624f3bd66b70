"""Linear regression by SGD on synthetic data y = X w + b + noise; prints the recovered w and b."""

from __future__ import annotations

import sys

import numpy as np

import vertexflow as vf

try:
    from examples._common import parser
except ImportError:
    from _common import parser


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], epochs=30, batch_size=32, lr=0.05).parse_args(argv)
    rng = np.random.default_rng(args.seed)
    true_w, true_b = np.array([2.0, -3.0, 0.5]), 1.5
    xs = rng.normal(size=(args.limit or 512, 3))
    ys = (xs @ true_w + true_b + 0.01 * rng.normal(size=len(xs)))[:, None]
    g = vf.Graph("linear_regression")
    x = g.input("x", shape=(None, 3), dtype="float64")
    y = g.input("y", shape=(None, 1), dtype="float64")
    w = g.param("w", value=np.zeros((3, 1)))
    b = g.param("b", value=np.zeros(1))
    loss = vf.mse(x @ w + b, y, name="loss")
    optimizer = vf.optim.SGD([w, b], lr=args.lr, momentum=0.9)
    history = vf.nn.fit(loss, optimizer, x, y, (xs, ys), epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, executor=args.executor, progress=not args.quiet)
    print(f"w = {np.round(w.value[:, 0], 3)} (true {true_w}), b = {b.value[0]:.3f} (true {true_b}), "
          f"final loss {history.loss[-1]:.6f}")
    return {"w": w.value[:, 0], "b": float(b.value[0]), "loss": history.loss[-1]}


if __name__ == "__main__":
    main(sys.argv[1:])
