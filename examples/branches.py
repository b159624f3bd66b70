"""A graph to benchmark as your own: two members (matmul + tanh, matmul + sigmoid) averaged.

    vertexflow bench examples/branches.py            # build() below
    vertexflow bench examples/branches.py:train      # forward and backward of a loss
    vertexflow trace examples/branches.py:build --compare  # where the concurrent time goes

A benchmark target is any function returning (graph, feeds, fetch), or
(graph, feeds, fetch, loss) to time training steps.
"""

import numpy as np

import vertexflow as vf


def _members(rows: int = 256, width: int = 1024):
    rng = np.random.default_rng(0)
    g = vf.Graph("branches")
    x = g.input("x", shape=(None, width))
    w1 = g.param("w1", value=rng.normal(scale=width**-0.5, size=(width, width)).astype("float32"))
    w2 = g.param("w2", value=rng.normal(scale=width**-0.5, size=(width, width)).astype("float32"))
    out = (vf.tanh(x @ w1) + vf.sigmoid(x @ w2)) * 0.5
    feeds = {x: rng.normal(size=(rows, width)).astype("float32")}
    return g, feeds, out


def build():
    return _members()


def train():
    g, feeds, out = _members()
    return g, feeds, [out], vf.mean(out * out)
