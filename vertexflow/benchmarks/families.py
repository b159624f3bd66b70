"""Graph families for benchmarks and the demo, each a function of its sizes returning a Workload.

Each returns a `Workload` (workload.py) whose recipe is the family and its
sizes, so a fresh process builds the same graph. Where a hand-written numpy
version of the same computation exists, it is attached for comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import vertexflow as vf

from ..machine import cores
from .workload import Workload


def _family(family: str, params: dict, graph: vf.Graph, fetch: list, feeds: dict, **extra) -> Workload:
    sizes = ",".join(f"{k}={v}" for k, v in params.items())
    return Workload(f"{family}({sizes})", graph, fetch, feeds, family=family, params=dict(params),
                    recipe={"kind": "family", "family": family, "params": dict(params)}, **extra)


def _sigmoid(h):
    """How a numpy user writes it (overflow to inf in exp gives 0, as it should)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-h))


def _heavy_op(h, i):
    """A GIL-releasing elementwise op of a few milliseconds on big arrays."""
    return vf.tanh(h) if i % 2 == 0 else vf.sigmoid(h)


def wide(branches: int = 8, depth: int = 6, rows: int = 256, cols: int = 1024, seed: int = 0) -> Workload:
    """`branches` independent chains of `depth` expensive elementwise ops over one input, summed at the end."""
    g = vf.Graph("wide")
    x = g.input("x", shape=(rows, cols), dtype="float64")
    outs = []
    for b in range(branches):
        h = x * (1.0 + 0.1 * b)
        for i in range(depth):
            h = _heavy_op(h, i + b)
        outs.append(h)
    total = outs[0]
    for o in outs[1:]:
        total = total + o
    feeds = {x: np.random.default_rng(seed).normal(size=(rows, cols))}

    def by_hand():
        total = None
        for b in range(branches):
            h = feeds[x] * (1.0 + 0.1 * b)
            for i in range(depth):
                h = np.tanh(h) if (i + b) % 2 == 0 else _sigmoid(h)
            total = h if total is None else total + h
        return total

    def branch(b):
        """One branch with in-place ufuncs, numpy's best form of it."""
        h = feeds[x] * (1.0 + 0.1 * b)
        for i in range(depth):
            if (i + b) % 2 == 0:
                np.tanh(h, out=h)
            else:
                with np.errstate(over="ignore"):
                    np.negative(h, out=h)
                    np.exp(h, out=h)
                h += 1.0
                np.reciprocal(h, out=h)
        return h

    pool = []

    def on_threads():
        """The branches on a pool of a thread per core, written by hand: what the actor network should reach."""
        if not pool:
            from concurrent.futures import ThreadPoolExecutor

            pool.append(ThreadPoolExecutor(cores(), thread_name_prefix="numpy-by-hand"))
        futures = [pool[0].submit(branch, b) for b in range(branches)]
        total = futures[0].result()
        for f in futures[1:]:
            total += f.result()
        return total

    return _family("wide", dict(branches=branches, depth=depth, rows=rows, cols=cols), g, [total], feeds, numpy=by_hand,
                   by_hand={"numpy-threads": on_threads})


def deep(length: int = 40, rows: int = 256, cols: int = 1024, seed: int = 0) -> Workload:
    """One chain of expensive ops: no parallel work at all (the overhead floor)."""
    g = vf.Graph("deep")
    x = g.input("x", shape=(rows, cols), dtype="float64")
    h = x
    for i in range(length):
        h = _heavy_op(h, i)
    feeds = {x: np.random.default_rng(seed).normal(size=(rows, cols))}

    def by_hand():
        out = feeds[x]
        for i in range(length):
            out = np.tanh(out) if i % 2 == 0 else _sigmoid(out)
        return out

    return _family("deep", dict(length=length, rows=rows, cols=cols), g, [h], feeds, numpy=by_hand)


def inception(blocks: int = 3, width: int = 4, rows: int = 256, cols: int = 512, seed: int = 0) -> Workload:
    """Diamonds: each block fans out to `width` two-op branches and joins them by summing."""
    g = vf.Graph("inception")
    x = g.input("x", shape=(rows, cols), dtype="float64")
    h = x
    for _ in range(blocks):
        branches = [_heavy_op(_heavy_op(h * (0.5 + 0.1 * i), i), i + 1) for i in range(width)]
        joined = branches[0]
        for b in branches[1:]:
            joined = joined + b
        h = joined * (1.0 / width)
    feeds = {x: np.random.default_rng(seed).normal(size=(rows, cols))}
    return _family("inception", dict(blocks=blocks, width=width, rows=rows, cols=cols), g, [h], feeds)


def random_dag(vertices: int = 60, rows: int = 128, cols: int = 512, seed: int = 0) -> Workload:
    """A seeded random DAG of expensive unary and cheap binary ops."""
    rng = np.random.default_rng(seed)
    g = vf.Graph("random_dag")
    x = g.input("x", shape=(rows, cols), dtype="float64")
    nodes = [x]
    for i in range(vertices):
        if rng.random() < 0.6 or len(nodes) < 2:
            node = _heavy_op(nodes[int(rng.integers(max(0, len(nodes) - 8), len(nodes)))], i)
        else:
            a, b = rng.choice(len(nodes), size=2, replace=False)
            node = (nodes[int(a)] + nodes[int(b)]) * 0.5
        nodes.append(node)
    sinks = [n for n in nodes[1:] if not g.consumers(n)]
    total = sinks[0]
    for s in sinks[1:]:
        total = total + s
    feeds = {x: rng.normal(size=(rows, cols))}
    return _family("random_dag", dict(vertices=vertices, rows=rows, cols=cols, seed=seed), g, [total], feeds)


def fine_grained(vertices: int = 1000, size: int = 64, seed: int = 0) -> Workload:
    """Many cheap ops on small arrays, in chains and fans: overhead is everything here."""
    rng = np.random.default_rng(seed)
    g = vf.Graph("fine_grained")
    a = g.input("a", shape=(size, size), dtype="float64")
    b = g.input("b", shape=(size, size), dtype="float64")
    nodes = [a, b]
    cheap_unary = [vf.abs, vf.relu, vf.negative, lambda h: h * 0.5]
    cheap_binary = [vf.add, vf.subtract, vf.minimum, vf.maximum]
    built = 0
    while built < vertices:
        if rng.random() < 0.7:  # extend a chain from a recent vertex
            src = nodes[-1 - int(rng.integers(0, min(4, len(nodes))))]
            node = cheap_unary[int(rng.integers(len(cheap_unary)))](src)
        else:  # fan in from anywhere earlier
            i, j = rng.integers(0, len(nodes), size=2)
            node = cheap_binary[int(rng.integers(len(cheap_binary)))](nodes[int(i)], nodes[int(j)])
        nodes.append(node)
        built += 1
    sinks = [n for n in nodes[2:] if not g.consumers(n)]
    total = sinks[0]
    for s in sinks[1:]:  # every vertex feeds the output
        total = total + s
    feeds = {a: rng.normal(size=(size, size)), b: rng.normal(size=(size, size))}
    return _family("fine_grained", dict(vertices=vertices, size=size), g, [total], feeds)


def _mlp(g, x, sizes, prefix, seed, activation=None):
    activation = activation or vf.relu
    init = vf.init.glorot_normal(seed=seed)
    h = x
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = g.param(f"{prefix}w{i}", shape=(n_in, n_out), init=init)
        bias = g.param(f"{prefix}b{i}", shape=(n_out,), init=vf.init.zeros())
        params += [w, bias]
        h = h @ w + bias
        if i < len(sizes) - 2:
            h = activation(h)
    return h, params


def mlp_ensemble(members: int = 4, batch: int = 128, hidden: int = 512, batches: int = 200, seed: int = 0) -> Workload:
    """Streaming inference: `members` MLPs (784-hidden-hidden/2-10) averaged, over a stream of batches."""
    g = vf.Graph("mlp_ensemble")
    x = g.input("x", shape=(None, 784))
    probs = []
    for m in range(members):
        logits, _ = _mlp(g, x, [784, hidden, hidden // 2, 10], f"m{m}.", seed + m)
        probs.append(vf.softmax(logits))
    mean = probs[0]
    for p in probs[1:]:
        mean = mean + p
    mean = vf.multiply(mean, 1.0 / members, name="ensemble")
    rng = np.random.default_rng(seed)
    stream = [{x: rng.random((batch, 784), dtype=np.float32)} for _ in range(batches)]
    return _family("mlp_ensemble", dict(members=members, batch=batch, hidden=hidden, batches=batches),
                   g, [mean], stream[0], mode="stream", batches=stream)


def mlp_train(batch: int = 100, seed: int = 0) -> Workload:
    """One training step (forward and backward) of the 784-250-100-10 MLP, float32."""
    g = vf.Graph("mlp_train")
    x = g.input("x", shape=(None, 784))
    y = g.input("y", shape=(None,), dtype="int64")
    logits, params = _mlp(g, x, [784, 250, 100, 10], "", seed)
    loss = vf.cross_entropy(logits, y, name="loss")
    rng = np.random.default_rng(seed)
    feeds = {x: rng.random((batch, 784), dtype=np.float32), y: rng.integers(0, 10, batch)}

    def by_hand():
        """The same step as a numpy user writes it: forward, loss, and every gradient."""
        ws, bs = [p.value for p in params[0::2]], [p.value for p in params[1::2]]
        xb, yb = feeds[x], feeds[y]
        z1 = xb @ ws[0] + bs[0]
        h1 = np.maximum(z1, 0)
        z2 = h1 @ ws[1] + bs[1]
        h2 = np.maximum(z2, 0)
        out = h2 @ ws[2] + bs[2]
        shifted = out - out.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        n = xb.shape[0]
        value = np.mean(np.log(s[:, 0]) - shifted[np.arange(n), yb])
        d = e / s
        d[np.arange(n), yb] -= 1
        d /= n
        gw3, gb3 = h2.T @ d, d.sum(0)
        d = (d @ ws[2].T) * (z2 > 0)
        gw2, gb2 = h1.T @ d, d.sum(0)
        d = (d @ ws[1].T) * (z1 > 0)
        gw1, gb1 = xb.T @ d, d.sum(0)
        return value, dict(zip(params, [gw1, gb1, gw2, gb2, gw3, gb3]))

    return _family("mlp_train", dict(batch=batch), g, [loss], feeds, mode="backward", loss=loss, numpy=by_hand)


def cnn_block(batch: int = 16, channels: int = 8, size: int = 28, seed: int = 0) -> Workload:
    """Two conv-relu-pool stages and a linear classifier, trained one step (forward and backward)."""
    g = vf.Graph("cnn_block")
    x = g.input("x", shape=(None, 1, size, size))
    y = g.input("y", shape=(None,), dtype="int64")
    init = vf.init.he_normal(seed=seed)
    w1 = g.param("conv1", shape=(channels, 1, 3, 3), init=init)
    w2 = g.param("conv2", shape=(2 * channels, channels, 3, 3), init=init)
    h = vf.max_pool2d(vf.relu(vf.conv2d(x, w1, padding=1)), 2)
    h = vf.max_pool2d(vf.relu(vf.conv2d(h, w2, padding=1)), 2)
    flat = h.reshape(-1, 2 * channels * (size // 4) ** 2)
    w3 = g.param("fc", shape=(2 * channels * (size // 4) ** 2, 10), init=init)
    loss = vf.cross_entropy(flat @ w3, y, name="loss")
    rng = np.random.default_rng(seed)
    feeds = {x: rng.random((batch, 1, size, size), dtype=np.float32), y: rng.integers(0, 10, batch)}
    return _family("cnn_block", dict(batch=batch, channels=channels, size=size), g, [loss], feeds, mode="backward",
                   loss=loss)


def chain(vertices: int = 3000, size: int = 64, batches: int = 120, seed: int = 0) -> Workload:
    """A stream through one long chain of cheap ops: Python-bound (the GIL caps threads), so only
    processes run two pieces of it at once. The distributed suite's pipeline."""
    rng = np.random.default_rng(seed)
    g = vf.Graph("chain")
    x = g.input("x", shape=(size, size), dtype="float64")
    h = x
    for i in range(vertices):
        h = h * 1.0001 if i % 2 == 0 else h + 0.0001
    stream = [{x: rng.normal(size=(size, size))} for _ in range(batches)]
    return _family("chain", dict(vertices=vertices, size=size, batches=batches), g, [h], stream[0],
                   mode="stream", batches=stream)


class Remote(vf.ops.Op):
    """Awaits `seconds` (a remote call's round trip), then does numpy work on its input: an async vertex."""

    name = "remote"

    def __init__(self, seconds: float, scale: float):
        self.seconds, self.scale = float(seconds), float(scale)

    def infer(self, x):
        return x

    async def forward(self, xp, x):
        import trio

        await trio.sleep(self.seconds)
        return xp.tanh(x * self.scale)

    def cost(self, x):
        return float(np.prod(x.shape))


def waiting(vertices: int = 64, seconds: float = 0.02, size: int = 64, seed: int = 0) -> Workload:
    """`vertices` independent vertices each awaiting `seconds` (then tanh of their input), summed: work that
    waits. Peers written by hand: the same awaits as trio tasks, and with asyncio.gather."""
    g = vf.Graph("waiting")
    x = g.input("x", shape=(size, size), dtype="float64")
    scales = [(k + 1) / vertices for k in range(vertices)]
    parts = [Remote(seconds, s)(x, name=f"remote_{k}") for k, s in enumerate(scales)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    feeds = {x: np.random.default_rng(seed).normal(size=(size, size))}
    a = feeds[x]

    def summed(values):
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out

    def with_trio():
        import trio

        values = [None] * vertices

        async def one(k):
            await trio.sleep(seconds)
            values[k] = np.tanh(a * scales[k])

        async def main():
            async with trio.open_nursery() as nursery:
                for k in range(vertices):
                    nursery.start_soon(one, k)

        trio.run(main)
        return summed(values)

    def with_asyncio():
        import asyncio

        async def one(k):
            await asyncio.sleep(seconds)
            return np.tanh(a * scales[k])

        async def main():
            return await asyncio.gather(*(one(k) for k in range(vertices)))

        return summed(asyncio.run(main()))

    return _family("waiting", dict(vertices=vertices, seconds=seconds, size=size), g, [total], feeds,
                   by_hand={"trio-by-hand": with_trio, "asyncio-by-hand": with_asyncio})


FAMILIES: dict[str, Callable[..., Workload]] = {
    "wide": wide,
    "deep": deep,
    "inception": inception,
    "random_dag": random_dag,
    "fine_grained": fine_grained,
    "mlp_ensemble": mlp_ensemble,
    "mlp_train": mlp_train,
    "cnn_block": cnn_block,
    "chain": chain,
    "waiting": waiting,
}
