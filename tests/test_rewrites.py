"""Rewrites (a product with its epilogue; an exported GELU): where they apply, and that they change no value."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow.kernels import products
from vertexflow.ops.shape import Identity
from vertexflow.rewrites import ProductEpilogue, plan_rewrites

ACTIVATIONS = {
    "none": lambda h: h,
    "relu": vf.relu,
    "clip": lambda h: vf.clip(h, 0.0, 6.0),
    "hard_swish": vf.hard_swish,
    "hard_sigmoid": vf.hard_sigmoid,
    "gelu": vf.gelu,
    "sigmoid": vf.sigmoid,
    "tanh": vf.tanh,
}


@st.composite
def product_graphs(draw):
    """A matmul or a convolution, a bias (or none, on either side of the add), an activation (or none)."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    g = vf.Graph()
    kind = draw(st.sampled_from(["matmul", "linear", "conv"]))
    if kind == "matmul":
        x = g.input("x", shape=(None, 6), dtype=dtype)
        w = g.param("w", value=rng.normal(size=(6, 5)).astype(dtype))
        product, bias_shape, feed = x @ w, (5,), rng.normal(size=(3, 6)).astype(dtype)
    elif kind == "linear":  # an exported Linear, its weight (out, in) used transposed (kernels/products.py at 3-8 rows)
        x = g.input("x", shape=(None, 6), dtype=dtype)
        w = g.param("w", value=rng.normal(size=(10, 6)).astype(dtype))
        rows = draw(st.sampled_from([2, 3, 6, 8]))
        product, bias_shape, feed = x @ vf.transpose(w), (10,), rng.normal(size=(rows, 6)).astype(dtype)
    else:
        groups = draw(st.sampled_from([1, 2]))
        x = g.input("x", shape=(None, 2, 6, 6), dtype=dtype)
        w = g.param("w", value=rng.normal(size=(4, 2 // groups, 3, 3)).astype(dtype))
        product = vf.conv2d(x, w, padding=draw(st.integers(0, 1)), groups=groups)
        bias_shape, feed = (4, 1, 1), rng.normal(size=(2, 2, 6, 6)).astype(dtype)
    h = product
    if draw(st.booleans()):
        b = g.param("b", value=rng.normal(size=bias_shape).astype(dtype))
        h = h + b if draw(st.booleans()) else b + h
    out = ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](h)
    return g, x, out, feed


@settings(max_examples=60, deadline=None)
@given(case=product_graphs())
def test_a_product_epilogue_gives_the_bits_of_its_vertices_on_every_executor(case):
    g, x, out, feed = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(products, "MIN_PRODUCTS", 0)  # kernels/products.py for a Linear of any size
        plain = vf.SequentialExecutor(g, optimize=False)
        want = plain.run({x: feed}, out)
        tape = vf.SequentialExecutor(g)
        for _ in range(3):  # the first call checked, then compiled
            np.testing.assert_array_equal(tape.run({x: feed}, out), want)
        with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as actors:
            for _ in range(2):
                np.testing.assert_array_equal(actors.run({x: feed}, out), want)


def _specs(nodes):
    return {n.id: n.spec for n in nodes}


def test_a_product_becomes_one_op_only_where_its_inner_values_are_needed_by_nobody():
    g = vf.Graph()
    x = g.input("x", shape=(4, 6))
    w = g.param("w", value=np.ones((6, 5), "float32"))
    b = g.param("b", value=np.ones(5, "float32"))
    product = x @ w
    out = vf.relu(product + b)
    order = vf.SequentialExecutor(g).tape([out]).order
    (op,) = plan_rewrites(order, _specs(order), {out.id}).ops.values()
    assert isinstance(op, ProductEpilogue) and [m.op_name for m in op.group.members] == ["matmul", "add", "relu"]
    # fetched, the product must exist as a value: nothing joins it
    assert plan_rewrites(order, _specs(order), {out.id, product.id}).ops == {}
    # read by another vertex too: the same
    other = vf.exp(product)
    order = vf.SequentialExecutor(g).tape([out, other]).order
    assert plan_rewrites(order, _specs(order), {out.id, other.id}).ops == {}


def test_backward_keeps_the_values_its_derivatives_read():
    g = vf.Graph()
    x = g.input("x", shape=(4, 6))
    w = g.param("w", value=np.ones((6, 5), "float32"))
    loss = vf.sum(vf.relu(x @ w))
    tape = vf.SequentialExecutor(g)
    feeds = {x: np.ones((4, 6), "float32")}
    value, grads = tape.backward(feeds, loss)
    plain_value, plain_grads = vf.SequentialExecutor(g, optimize=False).backward(feeds, loss)
    np.testing.assert_array_equal(value, plain_value)
    np.testing.assert_array_equal(grads[w], plain_grads[w])


needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                                reason="onnx is not installed (pip install -e '.[onnx]')")


def _gelu_model(order: str):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    consts = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [v]))
              for name, v in (("root2", 2 ** 0.5), ("one", 1.0), ("half", 0.5), ("inv", 2 ** -0.5))]
    if order == "torch":  # Div, Erf, Add, Mul(x, .), Mul(., 0.5): what torch's exporter writes
        nodes = [helper.make_node("Div", ["x", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                 helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                 helper.make_node("Mul", ["m", "half"], ["y"])]
    else:  # (x * 0.5) * (1 + erf(x * 1/sqrt 2))
        nodes = [helper.make_node("Mul", ["x", "inv"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                 helper.make_node("Add", ["one", "e"], ["a"]), helper.make_node("Mul", ["x", "half"], ["m"]),
                 helper.make_node("Mul", ["m", "a"], ["y"])]
    return helper.make_model(helper.make_graph(consts + nodes, "gelu", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


@needs_onnx
@pytest.mark.parametrize("order", ["torch", "halved_first"])
def test_an_exported_gelu_imports_as_one_vertex(order):
    model = _gelu_model(order)
    feed = np.random.default_rng(0).normal(scale=3, size=(5, 8)).astype(np.float32)
    fused = vf.onnx.load(model)
    assert [n.op_name for n in fused.graph if n.kind == "op" and n.op_name != "identity"] == ["gelu"]
    nodes = vf.onnx.load(model, optimize=False)
    assert "erf" in [n.op_name for n in nodes.graph]
    a, b = fused.run({"x": feed})[0], nodes.run({"x": feed})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@needs_onnx
def test_a_gelu_whose_inner_value_is_an_output_stays_as_nodes():
    from onnx import TensorProto, helper

    model = _gelu_model("torch")
    model.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", 8]))
    assert "erf" in [n.op_name for n in vf.onnx.load(model).graph]


def test_a_step_with_nothing_to_rewrite_is_planned_once_not_at_every_call(monkeypatch):
    import vertexflow.rewrites as rewrites

    planned = []
    plan_step = rewrites.plan_step
    monkeypatch.setattr(rewrites, "plan_step", lambda *a, **k: planned.append(1) or plan_step(*a, **k))
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    y = vf.tanh(x)  # nothing to fuse or rewrite
    with vf.ActorExecutor(g, threads=0, schedule="network") as ex:
        for _ in range(3):
            ex.run({x: np.ones(4)}, y)
    assert len(planned) == 1


@pytest.mark.parametrize("activation", ["relu", "clip", "hard_swish", "hard_sigmoid", "sigmoid", "tanh"])
def test_a_product_epilogue_on_another_array_module_applies_its_activation(activation):
    """On a GPU (cupy) the epilogue runs the vertices' own forwards: every activation is applied there
    too, not only those the CPU runs after its pass. (numpy under another name stands in for cupy.)"""
    import types

    other = types.ModuleType("other_numpy")
    other.__getattr__ = lambda name: getattr(np, name)
    g = vf.Graph()
    x = g.input("x", shape=(3, 6), dtype="float32")
    w = g.param("w", value=np.random.default_rng(0).normal(size=(6, 5)).astype("float32"))
    b = g.param("b", value=np.linspace(-1, 1, 5, dtype="float32"))
    out = ACTIVATIONS[activation](x @ w + b)
    order = vf.SequentialExecutor(g).tape([out]).order
    (op,) = plan_rewrites(order, _specs(order), {out.id}).ops.values()
    feed = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    want = vf.SequentialExecutor(g, optimize=False).run({x: feed}, out)
    np.testing.assert_allclose(op.forward(other, feed, w.value, b.value), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["pointwise", "depthwise", "direct", "columns"])
@pytest.mark.parametrize("activation", ["relu", "hard_swish", "gelu", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_convolutions_epilogue_run_by_runs_of_images_gives_the_bits_of_its_vertices(kind, activation, dtype,
                                                                                       monkeypatch):
    """Outputs larger than the cache get their epilogue a few images at a time, on the threads that
    computed them (made small here so that small images take that path); the direct kernel and the
    image jobs (1x1 and column convolutions, grouped ones among them) run it on each image as it is
    done."""
    from vertexflow import rewrites
    from vertexflow.kernels import im2col, image_jobs

    monkeypatch.setattr(rewrites, "_IN_CACHE", 0)
    monkeypatch.setattr(im2col, "CHUNK_BYTES", 6000)  # one to four images a run
    monkeypatch.setattr(im2col, "MIN_SPLIT_FLOPS", 1.0)  # and split over the threads
    monkeypatch.setattr(image_jobs, "MIN_PART_FLOPS", 1.0)
    rng = np.random.default_rng(3)
    g = vf.Graph()
    x = g.input("x", shape=(11, 4, 9, 9), dtype=dtype)
    shape, groups = {"pointwise": ((6, 4, 1, 1), 1), "depthwise": ((4, 1, 3, 3), 4),
                     "direct": ((8, 4, 3, 3), 1), "columns": ((6, 2, 3, 3), 2)}[kind]
    w = g.param("w", value=rng.normal(size=shape).astype(dtype))
    b = g.param("b", value=rng.normal(size=(shape[0], 1, 1)).astype(dtype))
    out = ACTIVATIONS[activation](vf.conv2d(x, w, padding=shape[2] // 2, groups=groups) + b)
    feed = rng.normal(size=(11, 4, 9, 9)).astype(dtype)
    tape = vf.SequentialExecutor(g)
    order = tape.tape([out]).order
    (op,) = plan_rewrites(order, _specs(order), {out.id}).ops.values()
    assert op.product.algorithm(np, feed.shape, shape, feed.dtype) == kind
    want = vf.SequentialExecutor(g, optimize=False).run({x: feed}, out)
    for _ in range(3):
        np.testing.assert_array_equal(tape.run({x: feed}, out), want)


@pytest.mark.parametrize("activation", ["relu", "hard_swish", "gelu", "tanh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_transposed_convolution_of_tiles_apart_takes_its_epilogue_with_the_bits_of_its_vertices(activation, dtype):
    """A UNet's upsampling (kernel = stride) with its bias and activation is one op, as a convolution
    is; one whose tiles overlap is left alone (its kernel runs no epilogue)."""
    rng = np.random.default_rng(7)
    g = vf.Graph()
    x = g.input("x", shape=(4, 6, 5, 8), dtype=dtype)
    w = g.param("w", value=rng.normal(size=(6, 8, 2, 2)).astype(dtype))
    b = g.param("b", value=rng.normal(size=(8, 1, 1)).astype(dtype))
    out = ACTIVATIONS[activation](vf.conv_transpose2d(x, w, stride=2) + b)
    overlapping = ACTIVATIONS[activation](vf.conv_transpose2d(x, w, stride=1) + b)
    tape = vf.SequentialExecutor(g)
    for fetched, grouped in ((out, True), (overlapping, False)):
        order = tape.tape([fetched]).order
        ops = plan_rewrites(order, _specs(order), {fetched.id}).ops.values()
        assert [repr(op) for op in ops] == ([f"ProductEpilogue(conv_transpose2d + bias + {activation})"]
                                            if grouped else [])
    feed = rng.normal(size=(4, 6, 5, 8)).astype(dtype)
    want = vf.SequentialExecutor(g, optimize=False).run({x: feed}, [out, overlapping])
    for _ in range(2):
        for got, expected in zip(tape.run({x: feed}, [out, overlapping]), want):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_a_convolution_reshaped_on_its_way_to_its_activation_is_one_op(activation):
    """An imported Conv1d: expand_dims, conv2d, its bias, squeeze (and a naming identity), then the
    activation: one op computing the 4-D convolution, its value handed on in the 3-D shape."""
    rng = np.random.default_rng(4)
    g = vf.Graph()
    x = g.input("x", shape=(5, 3, 40), dtype="float32")
    w = g.param("w", value=rng.normal(size=(8, 3, 1, 9)).astype("float32"))
    b = g.param("b", value=rng.normal(size=(8, 1, 1)).astype("float32"))
    conv = vf.conv2d(vf.expand_dims(x, 2), w, stride=(1, 2), padding=(0, 4)) + b
    named = Identity()(vf.squeeze(conv, 2), name="conv_output")  # as the importer names values
    out = ACTIVATIONS[activation](named)
    order = vf.SequentialExecutor(g).tape([out]).order
    (op,) = plan_rewrites(order, _specs(order), {out.id}).ops.values()
    assert [m.op_name for m in op.group.members] == ["conv2d", "add", "squeeze", "identity", activation]
    assert op.output_spec.shape == (5, 8, 20) and op.product_shape == (5, 8, 1, 20)
    feed = rng.normal(size=(5, 3, 40)).astype("float32")
    want = vf.SequentialExecutor(g, optimize=False).run({x: feed}, out)
    for _ in range(3):
        np.testing.assert_array_equal(vf.SequentialExecutor(g).run({x: feed}, out), want)
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as actors:
        np.testing.assert_array_equal(actors.run({x: feed}, out), want)
