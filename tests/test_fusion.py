"""Elementwise fusion: groups found where nothing else needs their inner values, same bits everywhere."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow import fusion

pytestmark = pytest.mark.skipif(not fusion.available(), reason="numba is not installed (the fuse extra)")

UNARY = [vf.negative, vf.relu, vf.abs, lambda h: h * 0.5, lambda h: h + 1.5, vf.tanh, vf.erf, vf.gelu]
BINARY = [vf.add, vf.subtract, vf.multiply, vf.maximum, vf.minimum, lambda a, b: vf.where(a > b, a, b)]


@st.composite
def elementwise_graph(draw):
    g = vf.Graph("elementwise")
    rows = draw(st.sampled_from([64, 128]))
    x = g.input("x", shape=(None, 64), dtype=draw(st.sampled_from(["float32", "float64"])))
    b = g.param("b", value=np.linspace(-1, 1, 64).astype(x.dtype))
    nodes = [x, x + b]
    for _ in range(draw(st.integers(2, 12))):
        if draw(st.booleans()):
            node = draw(st.sampled_from(UNARY))(nodes[draw(st.integers(0, len(nodes) - 1))])
        else:
            a, c = (nodes[draw(st.integers(0, len(nodes) - 1))] for _ in range(2))
            node = draw(st.sampled_from(BINARY))(a, c)
        nodes.append(node)
    fetch = draw(st.lists(st.sampled_from(nodes[2:]), min_size=1, max_size=2, unique_by=id))
    feeds = {x: np.random.default_rng(draw(st.integers(0, 99))).standard_normal((rows, 64)).astype(x.dtype)}
    return g, fetch, feeds


@given(case=elementwise_graph())
def test_fused_runs_agree_bit_for_bit_and_with_the_unfused_graph_to_rounding(case):
    g, fetch, feeds = case
    plain = vf.SequentialExecutor(g).run(feeds, fetch)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "MIN_ELEMENTS", 1)
        patch.setattr(fusion, "decide", lambda op, specs: True)  # fuse every group found
        tape = vf.SequentialExecutor(g, fuse=True)
        with vf.ActorExecutor(g, fuse=True, schedule="network", heavy_flops=0) as act:
            fused, actors = tape.run(feeds, fetch), act.run(feeds, fetch)
    for p, f, a in zip(plain, fused, actors):
        np.testing.assert_array_equal(a, f)
        np.testing.assert_allclose(f, p, rtol=1e-6 if p.dtype == np.float32 else 1e-12, atol=1e-6)


def test_a_bias_scale_residual_relu_chain_runs_as_one_instruction(monkeypatch):
    monkeypatch.setattr(fusion, "decide", lambda op, specs: True)
    g = vf.Graph()
    x = g.input("x", shape=(None, 256), dtype="float32")
    b = g.param("b", value=np.ones(256, "float32"))
    out = vf.tanh(vf.relu((x + b) * 0.5 + x))
    ex = vf.SequentialExecutor(g, fuse=True)
    feeds = {x: np.random.default_rng(0).standard_normal((64, 256)).astype("float32")}
    np.testing.assert_allclose(ex.run(feeds, out), vf.SequentialExecutor(g).run(feeds, out), rtol=1e-6)
    (instructions, ops), = ex._fusion_cache.values()
    assert len(instructions) == 2 and [repr(op) for op in ops.values()] == [
        "FusedOp(t0 = (a0 + a1); t1 = (t0 * a2); t2 = (t1 + a0); t3 = (t2 if not (t2 <= 0.0) else 0.0))"]


def test_groups_keep_what_others_need():
    g = vf.Graph()
    x = g.input("x", shape=(128, 64), dtype="float64")
    inner = (x + 1.0) * 2.0
    fetched = vf.relu(inner - 3.0, name="fetched")
    out = vf.abs(fetched * 0.5) + inner
    order = vf.graph.ancestors([out, fetched])
    specs = {n.id: n.spec for n in order}
    groups = fusion.find_groups(order, specs, keep={out.id, fetched.id})
    roots = {grp.root.name for grp in groups}
    assert "fetched" in roots  # a fetched value ends a group, never hides inside one
    for grp in groups:
        inner_ids = {m.id for m in grp.members if m is not grp.root}
        assert fetched.id not in inner_ids and out.id not in inner_ids


def test_a_training_step_with_fusion_gives_the_unfused_gradients():
    g = vf.Graph()
    x = g.input("x", shape=(None, 64), dtype="float64")
    w = g.param("w", value=np.random.default_rng(0).standard_normal((64, 64)) * 0.1)
    h = vf.relu((x @ w + 1.0) * 0.5)
    loss = vf.mean(h * h + vf.abs(h - 0.25))
    feeds = {x: np.random.default_rng(1).standard_normal((128, 64))}
    value, grads = vf.SequentialExecutor(g).backward(feeds, loss)
    fused_value, fused_grads = vf.SequentialExecutor(g, fuse=True).backward(feeds, loss)
    np.testing.assert_allclose(fused_value, value, rtol=1e-12)
    np.testing.assert_allclose(fused_grads[w], grads[w], rtol=1e-10, atol=1e-14)


def test_fuse_without_numba_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(fusion, "available", lambda: False)
    g = vf.Graph()
    g.input("x", shape=(3,))
    with pytest.raises(vf.MissingExtraError, match="fuse=True needs numba"):
        vf.SequentialExecutor(g, fuse=True)
