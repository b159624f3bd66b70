"""Test helpers shared by the executor suites: ops that count, fail, or make NaNs."""

import threading

import numpy as np

import vertexflow as vf


class Counting(vf.ops.Op):
    """Identity that counts its forward calls."""

    name = "counting"

    def __init__(self):
        self.calls = 0

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.calls += 1
        return x

    def vjp(self, F, g, xs, y):
        return (g,)


class Explode(vf.ops.Op):
    name = "explode"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        raise ZeroDivisionError("boom")


class MakeNaN(vf.ops.Op):
    name = "make_nan"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        out = x.copy()
        out.flat[0] = np.nan
        return out


def small_mlp(dtype="float32", seed=0):
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, 8), dtype=dtype)
    y = g.input("y", shape=(None,), dtype="int64")
    init = vf.init.glorot_normal(seed=seed)
    w1 = g.param("w1", shape=(8, 16), init=init, dtype=dtype)
    b1 = g.param("b1", shape=(16,), init=vf.init.zeros(), dtype=dtype)
    w2 = g.param("w2", shape=(16, 4), init=init, dtype=dtype)
    b2 = g.param("b2", shape=(4,), init=vf.init.zeros(), dtype=dtype)
    h = vf.relu(x @ w1 + b1, name="hidden")
    logits = vf.add(h @ w2, b2, name="logits")
    loss = vf.cross_entropy(logits, y, name="loss")
    rng = np.random.default_rng(seed)
    feeds = {x: rng.normal(size=(5, 8)).astype(dtype), y: rng.integers(0, 4, 5)}
    return g, feeds, loss


def traced_on_two_threads(g, steps) -> "vf.Tracer":
    """A SequentialExecutor and an ActorExecutor (every vertex on its workers) run `steps(ex)` at once,
    each from its own thread, under one tracer; the tracer."""
    tracer = vf.Tracer()
    errors = []

    def work(make):
        try:
            with vf.trace(tracer), make(g) as ex:
                steps(ex)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    makers = (vf.SequentialExecutor, lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network"))
    threads = [threading.Thread(target=work, args=(make,)) for make in makers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return tracer
