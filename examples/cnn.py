"""A small CNN on the 8x8 digits: conv 3x3 (16) -> ReLU -> max pool -> conv 3x3 (32) -> ReLU -> linear."""

from __future__ import annotations

import sys

import vertexflow as vf

try:
    from examples._common import parser
except ImportError:
    from _common import parser


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], epochs=10, batch_size=32, lr=2e-3).parse_args(argv)
    xs, ys = vf.data.load_digits()
    xtr, ytr, xte, yte = vf.data.train_test_split(xs.reshape(-1, 1, 8, 8), ys, test=0.2, seed=args.seed)
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]
    g = vf.Graph("cnn")
    x = g.input("x", shape=(None, 1, 8, 8))
    y = g.input("y", shape=(None,), dtype="int64")
    model = vf.nn.Sequential(
        vf.nn.Conv2d(1, 16, 3, padding=1, activation="relu", seed=args.seed, name="conv1"),
        vf.nn.MaxPool2d(2),
        vf.nn.Conv2d(16, 32, 3, padding=1, activation="relu", seed=args.seed + 1, name="conv2"),
        vf.nn.Flatten(),
        vf.nn.Dropout(0.2, seed=args.seed),
        vf.nn.Linear(32 * 4 * 4, 10, seed=args.seed + 2, name="output"),
    )
    logits = model(x)
    loss = vf.cross_entropy(logits, y, name="loss")
    optimizer = vf.optim.Adam(model.parameters(), lr=args.lr)
    history = vf.nn.fit(loss, optimizer, x, y, (xtr, ytr), epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, executor=args.executor, validation=(xte, yte), output=logits,
                        mode=model.mode, progress=not args.quiet)
    print(f"test accuracy: {history.val_accuracy[-1]:.4f}")
    if args.save:
        vf.nn.save(args.save, model.parameters(), optimizer)
    return {"test_accuracy": history.val_accuracy[-1]}


if __name__ == "__main__":
    main(sys.argv[1:])
