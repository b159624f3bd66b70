"""An autoencoder on the digits: encoder 64 -> 250 -> 50, decoder 50 -> 250 -> 64, sigmoid output, MSE."""

from __future__ import annotations

import sys

import numpy as np

import vertexflow as vf

try:
    from examples._common import parser
except ImportError:
    from _common import parser


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], epochs=20, batch_size=32, lr=1e-3).parse_args(argv)
    xs, _ = vf.data.load_digits()
    xtr, _, xte, _ = vf.data.train_test_split(xs, np.zeros(len(xs), np.int64), test=0.2, seed=args.seed)
    if args.limit:
        xtr = xtr[: args.limit]
    g = vf.Graph("autoencoder")
    x = g.input("x", shape=(None, 64))
    target = g.input("target", shape=(None, 64))
    encoder = vf.nn.Sequential(vf.nn.Linear(64, 250, "relu", seed=args.seed, name="enc1"),
                               vf.nn.Linear(250, 50, "relu", seed=args.seed + 1, name="code"))
    decoder = vf.nn.Sequential(vf.nn.Linear(50, 250, "relu", seed=args.seed + 2, name="dec1"),
                               vf.nn.Linear(250, 64, "sigmoid", seed=args.seed + 3, name="recon"))
    reconstruction = decoder(encoder(x))
    loss = vf.mse(reconstruction, target, name="loss")
    params = encoder.parameters() + decoder.parameters()
    optimizer = vf.optim.Adam(params, lr=args.lr)
    history = vf.nn.fit(loss, optimizer, x, target, (xtr, xtr), epochs=args.epochs, batch_size=args.batch_size,
                        seed=args.seed, executor=args.executor, validation=(xte, xte), progress=not args.quiet)
    baseline = float(np.mean((xte - xtr.mean(axis=0)) ** 2))
    print(f"held-out reconstruction MSE {history.val_loss[-1]:.4f} (predicting the mean image: {baseline:.4f})")
    if args.save:
        vf.nn.save(args.save, params, optimizer)
    return {"val_mse": history.val_loss[-1], "mean_image_mse": baseline}


if __name__ == "__main__":
    main(sys.argv[1:])
