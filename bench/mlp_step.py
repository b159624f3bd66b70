"""Sequential executor against hand-written numpy: one MLP training step's forward + backward.

MLP 784-250-100-10, ReLU, softmax cross-entropy, batch 100, float32 (the
issue's reference). Both sides compute the loss and every param gradient
from the same weights and batch; the script checks they agree, then reports
median times over repeated runs after warm-up and their ratio.

    python bench/mlp_step.py [--repeat 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

import vertexflow as vf
from vertexflow.benchmarks.timing import interleaved


def build(seed: int = 0, batch: int = 100):
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, 784))
    y = g.input("y", shape=(None,), dtype="int64")
    init = vf.init.glorot_normal(seed=seed)
    sizes = [784, 250, 100, 10]
    params = []
    h = x
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=1):
        w = g.param(f"w{i}", shape=(n_in, n_out), init=init)
        b = g.param(f"b{i}", shape=(n_out,), init=vf.init.zeros())
        params += [w, b]
        h = h @ w + b
        if i < len(sizes) - 1:
            h = vf.relu(h, name=f"h{i}")
    loss = vf.cross_entropy(h, y, name="loss")
    rng = np.random.default_rng(seed)
    feeds = {x: rng.random((batch, 784), dtype=np.float32), y: rng.integers(0, 10, batch)}
    return g, params, loss, feeds


def numpy_step(ws, bs, xb, yb):
    """The same step written by hand, as a numpy user would."""
    z1 = xb @ ws[0] + bs[0]
    h1 = np.maximum(z1, 0)
    z2 = h1 @ ws[1] + bs[1]
    h2 = np.maximum(z2, 0)
    logits = h2 @ ws[2] + bs[2]
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    n = xb.shape[0]
    loss = np.mean(np.log(s[:, 0]) - shifted[np.arange(n), yb])
    d = e / s
    d[np.arange(n), yb] -= 1
    d /= n
    gw3, gb3 = h2.T @ d, d.sum(0)
    d = (d @ ws[2].T) * (z2 > 0)
    gw2, gb2 = h1.T @ d, d.sum(0)
    d = (d @ ws[1].T) * (z1 > 0)
    gw1, gb1 = xb.T @ d, d.sum(0)
    return loss, [gw1, gb1, gw2, gb2, gw3, gb3]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    g, params, loss, feeds = build()
    ex = vf.SequentialExecutor(g)
    ws = [p.value for p in params[0::2]]
    bs = [p.value for p in params[1::2]]
    xb, yb = feeds[g["x"]], feeds[g["y"]]

    value, grads = ex.backward(feeds, loss)
    ref_loss, ref_grads = numpy_step(ws, bs, xb, yb)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
    for p, ref in zip(params, ref_grads):
        np.testing.assert_allclose(grads[p], ref, rtol=1e-3, atol=1e-6)

    times = interleaved({"numpy": lambda: numpy_step(ws, bs, xb, yb), "sequential": lambda: ex.backward(feeds, loss)},
                        rounds=10, inner=max(1, args.repeat // 10))
    t_numpy, t_seq = times["numpy"], times["sequential"]
    result = {
        "numpy_ms": statistics.median(t_numpy) * 1e3,
        "sequential_ms": statistics.median(t_seq) * 1e3,
    }
    result["ratio"] = result["sequential_ms"] / result["numpy_ms"]
    try:
        from threadpoolctl import threadpool_info

        result["blas"] = [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()]
    except ImportError:
        pass
    print(f"hand-written numpy : {result['numpy_ms']:.3f} ms/step (median of {len(t_numpy)})")
    print(f"SequentialExecutor : {result['sequential_ms']:.3f} ms/step (median of {len(t_seq)})")
    print(f"ratio              : {result['ratio']:.2f}x (target <= 1.2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
