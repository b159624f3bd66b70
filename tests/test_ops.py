"""Every op against oracles: numpy for values; finite differences and PyTorch for gradients.

Each case builds the op on float64 inputs, then checks
  1. forward against a numpy reference (float64 and float32),
  2. runtime backward against central finite differences (vf.check_grad),
  3. runtime backward against torch.autograd (when torch is installed),
  4. symbolic vf.grad run on the tape equals runtime backward, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import vertexflow as vf

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # torch is an optional test extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install -e '.[test]')")


@dataclass
class Case:
    id: str
    shapes: list[tuple]
    build: Callable  # (*nodes) -> node
    numpy: Callable  # (*arrays) -> array
    torch: Callable | None = None  # (*tensors) -> tensor
    domain: str = "any"  # "any", "positive", "away0": away from kinks at 0
    extra: dict[str, Any] = field(default_factory=dict)  # int64 inputs: name -> array
    rtol: float = 1e-5


def _sample(rng, shape, domain):
    x = rng.normal(size=shape)
    if domain == "positive":
        return np.abs(x) + 0.5
    if domain == "away0":
        return np.sign(x) * (np.abs(x) + 0.2)
    if domain == "away3":  # kinks of the hard activations at 0 and +-3 (and -0.75, 1.75 for 0.4x + 0.3)
        x = x * 2.5
        for kink in (-3.0, -0.75, 0.0, 1.75, 3.0):
            near = np.abs(x - kink) < 0.1
            x = np.where(near, kink + 0.1 * np.sign(x - kink + 1e-9), x)
        return x
    return x


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _conv_ref(x, w, stride, padding, dilation):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + dilation * (kh - 1) + 1 : dilation,
                       j * stride : j * stride + dilation * (kw - 1) + 1 : dilation]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


def _pool_ref(x, k, s, p, reduce, fill, d=1):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    span = d * (k - 1) + 1
    oh, ow = (h + 2 * p - span) // s + 1, (w + 2 * p - span) // s + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(xp[:, :, i * s : i * s + span : d, j * s : j * s + span : d], axis=(2, 3))
    return out


def _grouped_conv_ref(x, w, groups):
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    return np.concatenate([_conv_ref(x[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], 1, 1, 1)
                           for g in range(groups)], axis=1)


def _conv_transpose_ref(x, w, stride, padding, output_padding, groups):
    """Each input pixel spreads w's kernel into the output, by definition."""
    n, c, h, wd = x.shape
    per_in, per_out = c // groups, w.shape[1]
    kh, kw = w.shape[2:]
    full = np.zeros((n, per_out * groups, (h - 1) * stride + kh + output_padding, (wd - 1) * stride + kw + output_padding))
    for ci in range(c):
        g = ci // per_in
        for i in range(h):
            for j in range(wd):
                full[:, g * per_out:(g + 1) * per_out, i * stride:i * stride + kh, j * stride:j * stride + kw] += \
                    x[:, ci, i, j][:, None, None, None] * w[ci]
    return full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]


def _layer_norm_ref(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


LABELS = np.array([2, 0, 3, 3, 1])

CASES = [
    Case("add_broadcast", [(3, 4), (4,)], lambda a, b: a + b, np.add, lambda a, b: a + b),
    Case("sub_broadcast", [(2, 1, 4), (3, 1)], lambda a, b: a - b, np.subtract, lambda a, b: a - b),
    Case("mul_broadcast", [(3, 4), (3, 1)], lambda a, b: a * b, np.multiply, lambda a, b: a * b),
    Case("div", [(3, 4), (3, 4)], lambda a, b: a / b, np.divide, lambda a, b: a / b, domain="positive"),
    Case("pow", [(3, 4), (3, 4)], lambda a, b: a**b, np.power, lambda a, b: a**b, domain="positive"),
    Case("pow_scalar", [(5,)], lambda a: a**3, lambda a: a**3, lambda a: a**3),
    Case("rsub_scalar", [(5,)], lambda a: 2.0 - a, lambda a: 2.0 - a, lambda a: 2.0 - a),
    Case("rdiv_scalar", [(5,)], lambda a: 1.0 / a, lambda a: 1.0 / a, lambda a: 1.0 / a, domain="positive"),
    Case("neg", [(3, 4)], lambda a: -a, np.negative, lambda a: -a),
    Case("exp", [(3, 4)], vf.exp, np.exp, torch and torch.exp),
    Case("log", [(3, 4)], vf.log, np.log, torch and torch.log, domain="positive"),
    Case("sqrt", [(3, 4)], vf.sqrt, np.sqrt, torch and torch.sqrt, domain="positive"),
    Case("abs", [(3, 4)], vf.abs, np.abs, torch and torch.abs, domain="away0"),
    Case("tanh", [(3, 4)], vf.tanh, np.tanh, torch and torch.tanh),
    Case("erf", [(3, 4)], vf.erf, np.vectorize(math.erf), torch and torch.erf),
    Case("gelu", [(3, 4)], vf.gelu, lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
         torch and TF.gelu),
    Case("gelu_tanh", [(3, 4)], lambda x: vf.gelu(x, approximate="tanh"),
         lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
         torch and (lambda x: TF.gelu(x, approximate="tanh"))),
    Case("hard_swish", [(3, 4)], vf.hard_swish, lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
         torch and TF.hardswish, domain="away3"),
    Case("hard_sigmoid", [(3, 4)], lambda x: vf.hard_sigmoid(x, 0.4, 0.3), lambda x: np.clip(0.4 * x + 0.3, 0, 1),
         torch and (lambda x: torch.clamp(0.4 * x + 0.3, 0, 1)), domain="away3"),
    Case("clip", [(3, 4)], lambda x: vf.clip(x, -0.5, 0.75), lambda x: np.clip(x, -0.5, 0.75),
         torch and (lambda x: torch.clamp(x, -0.5, 0.75))),
    Case("sigmoid", [(3, 4)], vf.sigmoid, lambda x: 1 / (1 + np.exp(-x)), torch and torch.sigmoid),
    Case("relu", [(3, 4)], vf.relu, lambda x: np.maximum(x, 0), torch and torch.relu, domain="away0"),
    Case(
        "leaky_relu", [(3, 4)], lambda x: vf.leaky_relu(x, 0.1), lambda x: np.where(x > 0, x, 0.1 * x),
        torch and (lambda x: TF.leaky_relu(x, 0.1)), domain="away0",
    ),
    Case("maximum", [(3, 4), (4,)], vf.maximum, np.maximum, torch and torch.maximum),
    Case("minimum", [(3, 4), (3, 4)], vf.minimum, np.minimum, torch and torch.minimum),
    Case(
        "where", [(3, 4), (3, 4), (4,)], lambda c, a, b: vf.where(c > 0, a, b),
        lambda c, a, b: np.where(c > 0, a, b), torch and (lambda c, a, b: torch.where(c > 0, a, b)),
        domain="away0",
    ),
    Case("matmul_2d", [(3, 4), (4, 5)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("matmul_batched", [(2, 3, 4), (4, 5)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("matmul_batch_broadcast", [(3, 4), (2, 4, 5)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("matmul_vec_mat", [(4,), (2, 4, 5)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("matmul_mat_vec", [(2, 3, 4), (4,)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("matmul_vec_vec", [(4,), (4,)], vf.matmul, np.matmul, torch and torch.matmul),
    Case("transpose", [(2, 3, 4)], lambda x: vf.transpose(x, (1, 2, 0)),
         lambda x: np.transpose(x, (1, 2, 0)), lambda x: x.permute(1, 2, 0)),
    Case("T", [(3, 4)], lambda x: x.T, lambda x: x.T, lambda x: x.T),
    Case("reshape", [(2, 3, 4)], lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1), lambda x: x.reshape(4, -1)),
    Case("broadcast_to", [(3, 1)], lambda x: vf.broadcast_to(x, (2, 3, 4)),
         lambda x: np.broadcast_to(x, (2, 3, 4)), lambda x: x.expand(2, 3, 4)),
    Case("expand_squeeze", [(3, 4)], lambda x: vf.squeeze(vf.expand_dims(x, 1) * 2.0, 1),
         lambda x: x * 2.0, lambda x: x * 2.0),
    Case("concat", [(2, 3), (4, 3)], lambda a, b: vf.concat([a, b], axis=0),
         lambda a, b: np.concatenate([a, b]), torch and (lambda a, b: torch.cat([a, b]))),
    Case("concat_axis1", [(2, 3), (2, 1)], lambda a, b: vf.concat([a, b, a], axis=1),
         lambda a, b: np.concatenate([a, b, a], 1), torch and (lambda a, b: torch.cat([a, b, a], 1))),
    Case("getitem_slices", [(4, 5)], lambda x: x[1:3, ::2], lambda x: x[1:3, ::2], lambda x: x[1:3, ::2]),
    Case("getitem_int_newaxis", [(4, 5)], lambda x: x[2, None, :], lambda x: x[2, None, :], lambda x: x[2, None, :]),
    Case("getitem_gather_repeats", [(4, 3)], lambda x: x[[0, 2, 2, 3]],
         lambda x: x[[0, 2, 2, 3]], lambda x: x[[0, 2, 2, 3]]),
    Case("sum_all", [(3, 4)], vf.sum, np.sum, torch and torch.sum),
    Case("sum_axis", [(2, 3, 4)], lambda x: vf.sum(x, axis=1), lambda x: x.sum(1), lambda x: x.sum(1)),
    Case("sum_keepdims", [(2, 3, 4)], lambda x: vf.sum(x, axis=(0, 2), keepdims=True),
         lambda x: x.sum((0, 2), keepdims=True), lambda x: x.sum((0, 2), keepdim=True)),
    Case("mean_axis", [(2, 3, 4)], lambda x: vf.mean(x, axis=-1), lambda x: x.mean(-1), lambda x: x.mean(-1)),
    Case("max_axis", [(3, 4)], lambda x: vf.max(x, axis=1), lambda x: x.max(1), torch and (lambda x: torch.amax(x, 1))),
    Case("max_all_keepdims", [(3, 4)], lambda x: vf.max(x, keepdims=True), lambda x: x.max(keepdims=True),
         torch and (lambda x: torch.amax(x, (0, 1), keepdim=True))),
    Case("softmax", [(3, 5)], vf.softmax, lambda x: _softmax(x, -1), torch and (lambda x: torch.softmax(x, -1))),
    Case("softmax_axis0", [(3, 5)], lambda x: vf.softmax(x, axis=0), lambda x: _softmax(x, 0),
         torch and (lambda x: torch.softmax(x, 0))),
    Case("log_softmax", [(3, 5)], vf.log_softmax, lambda x: np.log(_softmax(x, -1)),
         torch and (lambda x: torch.log_softmax(x, -1))),
    Case("cross_entropy", [(5, 4)], lambda x, y: vf.cross_entropy(x, y),
         lambda x, y: -np.log(_softmax(x, 1))[np.arange(5), y].mean(),
         torch and (lambda x, y: TF.cross_entropy(x, y)), extra={"labels": LABELS}),
    Case("mse", [(3, 4), (3, 4)], vf.mse, lambda a, b: ((a - b) ** 2).mean(), torch and TF.mse_loss),
    Case("conv2d", [(2, 3, 5, 5), (4, 3, 3, 3)], vf.conv2d,
         lambda x, w: _conv_ref(x, w, 1, 0, 1), torch and TF.conv2d),
    Case("conv2d_stride_pad_dilation", [(2, 2, 7, 6), (3, 2, 3, 2)],
         lambda x, w: vf.conv2d(x, w, stride=2, padding=1, dilation=2),
         lambda x, w: _conv_ref(x, w, 2, 1, 2),
         torch and (lambda x, w: TF.conv2d(x, w, stride=2, padding=1, dilation=2))),
    Case("max_pool2d", [(2, 3, 6, 6)], lambda x: vf.max_pool2d(x, 2),
         lambda x: _pool_ref(x, 2, 2, 0, np.max, -np.inf), torch and (lambda x: TF.max_pool2d(x, 2))),
    Case("max_pool2d_overlap_pad", [(1, 2, 5, 5)], lambda x: vf.max_pool2d(x, 3, stride=2, padding=1),
         lambda x: _pool_ref(x, 3, 2, 1, np.max, -np.inf),
         torch and (lambda x: TF.max_pool2d(x, 3, stride=2, padding=1))),
    Case("avg_pool2d", [(2, 3, 6, 6)], lambda x: vf.avg_pool2d(x, 2),
         lambda x: _pool_ref(x, 2, 2, 0, np.mean, 0.0), torch and (lambda x: TF.avg_pool2d(x, 2))),
    Case("avg_pool2d_global", [(2, 3, 4, 4)], lambda x: vf.avg_pool2d(x, 4),
         lambda x: x.mean(axis=(2, 3), keepdims=True), torch and (lambda x: TF.avg_pool2d(x, 4))),
    Case("max_pool2d_global", [(2, 3, 4, 4)], lambda x: vf.max_pool2d(x, 4),
         lambda x: x.max(axis=(2, 3), keepdims=True), torch and (lambda x: TF.max_pool2d(x, 4))),
    Case("conv2d_grouped", [(2, 4, 5, 5), (6, 2, 3, 3)], lambda x, w: vf.conv2d(x, w, padding=1, groups=2),
         lambda x, w: _grouped_conv_ref(x, w, 2), torch and (lambda x, w: TF.conv2d(x, w, padding=1, groups=2))),
    Case("conv2d_depthwise", [(2, 3, 5, 5), (3, 1, 3, 3)], lambda x, w: vf.conv2d(x, w, padding=1, groups=3),
         lambda x, w: _grouped_conv_ref(x, w, 3), torch and (lambda x, w: TF.conv2d(x, w, padding=1, groups=3))),
    Case("conv_transpose2d", [(2, 4, 4, 5), (4, 3, 3, 2)],
         lambda x, w: vf.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2),
         lambda x, w: _conv_transpose_ref(x, w, 2, 1, 1, 2),
         torch and (lambda x, w: TF.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2))),
    Case("max_pool2d_dilated", [(1, 2, 7, 7)], lambda x: vf.max_pool2d(x, 2, stride=1, dilation=2),
         lambda x: _pool_ref(x, 2, 1, 0, np.max, -np.inf, d=2),
         torch and (lambda x: TF.max_pool2d(x, 2, stride=1, dilation=2))),
    Case("layer_norm", [(3, 5), (5,), (5,)], lambda x, w, b: vf.layer_norm(x, (-1,), 1e-5, w, b), _layer_norm_ref,
         torch and (lambda x, w, b: TF.layer_norm(x, (5,), w, b, 1e-5)), rtol=1e-4),
    Case("min_axis", [(3, 4)], lambda x: vf.ops.min(x, axis=0), lambda x: x.min(0),
         torch and (lambda x: torch.amin(x, 0))),
    Case("remainder", [(3, 4), (3, 4)], lambda a, b: vf.remainder(a * 3.0, b), lambda a, b: np.mod(a * 3.0, b),
         torch and (lambda a, b: torch.remainder(a * 3.0, b)), domain="positive"),
    Case("fmod", [(3, 4), (4,)], lambda a, b: vf.remainder(a * 3.0, b, fmod=True), lambda a, b: np.fmod(a * 3.0, b),
         torch and (lambda a, b: torch.fmod(a * 3.0, b)), domain="away0"),
    Case("take_embedding", [(5, 3)], lambda x, idx: vf.take(x, idx, axis=0), lambda x, idx: np.take(x, idx, axis=0),
         torch and (lambda x, idx: x[idx]), extra={"idx": np.array([[0, 4, 4], [2, -1, 0]])}),
    Case("take_axis1", [(2, 5, 3)], lambda x, idx: vf.take(x, idx, axis=1), lambda x, idx: np.take(x, idx, axis=1),
         torch and (lambda x, idx: x[:, idx]), extra={"idx": np.array([3, 1, 3])}),
    Case("pad_constant", [(2, 3)], lambda x: vf.pad(x, [(1, 0), (2, 1)], value=0.5),
         lambda x: np.pad(x, [(1, 0), (2, 1)], constant_values=0.5),
         torch and (lambda x: TF.pad(x, (2, 1, 1, 0), value=0.5))),
    *[Case(f"pad_{mode}", [(3, 4)], lambda x, m=mode: vf.pad(x, [(2, 1), (0, 3)], mode=m),
           lambda x, m=mode: np.pad(x, [(2, 1), (0, 3)], mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[m]))
      for mode in ("edge", "reflect", "wrap")],
    Case("avg_pool2d_overlap_pad", [(1, 2, 5, 5)], lambda x: vf.avg_pool2d(x, 3, stride=2, padding=1),
         lambda x: _pool_ref(x, 3, 2, 1, np.mean, 0.0),
         torch and (lambda x: TF.avg_pool2d(x, 3, stride=2, padding=1))),
]


def _build(case: Case, dtype="float64", rng=None):
    rng = rng or np.random.default_rng(7)
    g = vf.Graph(case.id)
    nodes, feeds = [], {}
    for i, shape in enumerate(case.shapes):
        node = g.input(f"in{i}", shape=shape, dtype=dtype)
        nodes.append(node)
        feeds[node] = _sample(rng, shape, case.domain).astype(dtype)
    extra_nodes = []
    for name, value in case.extra.items():
        node = g.input(name, shape=value.shape, dtype=value.dtype)
        extra_nodes.append(node)
        feeds[node] = value
    out = case.build(*nodes, *extra_nodes)
    return g, nodes, extra_nodes, out, feeds


def _scalarize(out, rng):
    """sum(out * r) for a fixed random r, so every output element matters to the gradient."""
    if out.shape == ():
        return out
    r = out.graph.const(rng.normal(size=out.shape).astype(out.dtype), name="probe")
    return vf.sum(out * r, name="objective")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_matches_numpy(case, dtype):
    g, nodes, extra, out, feeds = _build(case, dtype)
    got = vf.SequentialExecutor(g).run(feeds, out)
    want = case.numpy(*(feeds[n] for n in nodes), *(feeds[n] for n in extra))
    assert got.shape == np.shape(want)
    assert got.dtype == out.dtype
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradient_matches_finite_differences(case, rng):
    g, nodes, extra, out, feeds = _build(case)
    y = _scalarize(out, rng)
    vf.check_grad(y, nodes, feeds, eps=1e-6, rtol=1e-5, atol=1e-7)


@needs_torch
@pytest.mark.parametrize("case", [c for c in CASES if c.torch is not None], ids=lambda c: c.id)
def test_gradient_matches_torch(case, rng):
    g, nodes, extra, out, feeds = _build(case)
    y = _scalarize(out, rng)
    value, grads = vf.SequentialExecutor(g).backward(feeds, y, nodes)

    tensors = [torch.tensor(feeds[n], requires_grad=True) for n in nodes]
    extras = [torch.tensor(feeds[n]) for n in extra]
    t_out = case.torch(*tensors, *extras)
    if out.shape != ():
        t_out = (t_out * torch.tensor(g["probe"].value)).sum()
    t_out.backward()
    np.testing.assert_allclose(value, t_out.item(), rtol=1e-10)
    for node, t in zip(nodes, tensors):
        want = np.zeros(t.shape) if t.grad is None else t.grad.numpy()  # torch: None where no gradient flows
        np.testing.assert_allclose(grads[node], want, rtol=case.rtol, atol=1e-10, err_msg=node.name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_symbolic_grad_equals_runtime_backward_bitwise(case, dtype, rng):
    g, nodes, extra, out, feeds = _build(case, dtype)
    y = _scalarize(out, rng)
    symbolic = vf.grad(y, nodes)
    ex = vf.SequentialExecutor(g)
    ran = ex.run(feeds, symbolic)
    _, runtime = ex.backward(feeds, y, nodes)
    for node, s in zip(nodes, ran):
        assert s.dtype == runtime[node].dtype
        np.testing.assert_array_equal(s, runtime[node], err_msg=node.name)


def test_comparisons_give_booleans_and_no_gradient():
    g = vf.Graph()
    a = g.input("a", shape=(4,), dtype="float64")
    b = g.input("b", shape=(4,), dtype="float64")
    av, bv = np.array([1.0, 2, 3, 4]), np.array([4.0, 2, 1, 4])
    outs = [a > b, a < b, a >= b, a <= b, a == b, a != b]
    got = vf.SequentialExecutor(g).run({a: av, b: bv}, outs)
    want = [av > bv, av < bv, av >= bv, av <= bv, av == bv, av != bv]
    for o, w in zip(got, want):
        assert o.dtype == np.bool_
        np.testing.assert_array_equal(o, w)
    y = vf.sum(vf.where(a > b, a, b * 2.0))
    _, grads = vf.SequentialExecutor(g).backward({a: av, b: bv}, y, [a, b])
    np.testing.assert_array_equal(grads[a], [0, 0, 1, 0])
    np.testing.assert_array_equal(grads[b], [2, 2, 0, 2])


def test_max_splits_gradient_between_ties_like_torch():
    g = vf.Graph()
    x = g.input("x", shape=(2, 3), dtype="float64")
    xv = np.array([[1.0, 5.0, 5.0], [2.0, 2.0, 2.0]])
    _, grads = vf.SequentialExecutor(g).backward({x: xv}, vf.sum(vf.max(x, axis=1)), [x])
    np.testing.assert_allclose(grads[x], [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_cross_entropy_is_stable_for_large_logits():
    g = vf.Graph()
    x = g.input("x", shape=(2, 3), dtype="float32")
    y = g.input("y", shape=(2,), dtype="int64")
    loss = vf.cross_entropy(x, y)
    value = vf.SequentialExecutor(g).run({x: np.array([[1000.0, 0, -1000], [0, 0, 0]], "float32"), y: [0, 2]}, loss)
    np.testing.assert_allclose(value, (0 + np.log(3)) / 2, rtol=1e-6)


def test_cross_entropy_refuses_labels_out_of_range():
    g = vf.Graph()
    x = g.input("x", shape=(2, 3))
    y = g.input("y", shape=(2,), dtype="int64")
    loss = vf.cross_entropy(x, y, name="xent")
    with pytest.raises(vf.VertexError, match=r"'xent'.*labels must lie in \[0, 3\)"):
        vf.SequentialExecutor(g).run({x: np.zeros((2, 3), "float32"), y: [0, 3]}, loss)


def test_float32_stays_float32_with_python_scalars():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = (x * 2 + 1.5) / 3 - 1
    assert y.dtype == np.float32
    out = vf.SequentialExecutor(g).run({x: np.ones(3, "float32")}, y)
    assert out.dtype == np.float32


def test_numpy_array_on_the_left_builds_a_vertex():
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    y = np.array([1.0, 2.0, 3.0]) * x
    assert isinstance(y, vf.Node)
    np.testing.assert_array_equal(vf.SequentialExecutor(g).run({x: np.ones(3)}, y), [1, 2, 3])


# -- property tests over random shapes, broadcasting included ----------------------
@st.composite
def broadcast_pair(draw):
    ndim = draw(st.integers(1, 3))
    full = draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim))
    a = [d if draw(st.booleans()) else 1 for d in full]
    b = [d if draw(st.booleans()) else 1 for d in full]
    b = b[draw(st.integers(0, ndim - 1)) :]
    if draw(st.booleans()):
        a, b = b, a
    return tuple(a), tuple(b)


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (vf.maximum, np.maximum),
}


@given(shapes=broadcast_pair(), op=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2**16))
def test_broadcasting_binary_ops_forward_and_gradient(shapes, op, seed):
    build, ref = BINARY[op]
    rng = np.random.default_rng(seed)
    g = vf.Graph()
    a = g.input("a", shape=shapes[0], dtype="float64")
    b = g.input("b", shape=shapes[1], dtype="float64")
    feeds = {a: rng.normal(size=shapes[0]), b: np.abs(rng.normal(size=shapes[1])) + 0.5}
    out = build(a, b)
    got = vf.SequentialExecutor(g).run(feeds, out)
    np.testing.assert_allclose(got, ref(feeds[a], feeds[b]), rtol=1e-12)
    y = _scalarize(out, rng)
    vf.check_grad(y, [a, b], feeds)


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    reducer=st.sampled_from(["sum", "mean", "max"]),
    keepdims=st.booleans(),
    data=st.data(),
)
def test_reductions_over_random_axes(shape, reducer, keepdims, data):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    rng = np.random.default_rng(len(shape))
    g = vf.Graph()
    x = g.input("x", shape=tuple(shape), dtype="float64")
    xv = rng.normal(size=shape)
    out = getattr(vf, reducer)(x, axis=axis, keepdims=keepdims)
    got = vf.SequentialExecutor(g).run({x: xv}, out)
    np.testing.assert_allclose(got, getattr(np, reducer)(xv, axis=axis, keepdims=keepdims), rtol=1e-12)
    assert out.shape == np.shape(got)
    vf.check_grad(_scalarize(out, rng), [x], {x: xv})


def test_astype_passes_gradient_back_in_the_source_dtype():
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    c = np.array([1.0, -2.0, 0.5], "float32")
    y = vf.sum(vf.astype(x, "float32") * c)
    assert y.dtype == np.float32
    _, grads = vf.SequentialExecutor(g).backward({x: np.ones(3)}, y, [x])
    assert grads[x].dtype == np.float64
    np.testing.assert_array_equal(grads[x], c.astype("float64"))
    labels = vf.astype(x, "int64")
    assert labels.dtype == np.int64
    with pytest.raises(vf.ShapeError, match="dtype int64"):
        vf.grad(vf.sum(labels), x)


# -- derivative rules all the way down ------------------------------------------------
@needs_torch
@pytest.mark.parametrize("case", [c for c in CASES if c.torch is not None], ids=lambda c: c.id)
def test_second_derivative_matches_torch(case, rng):
    """vf.grad of a gradient (a Hessian-vector product) against torch.autograd.grad(create_graph=True).

    Every op a derivative rule uses needs a rule of its own for this to build at all.
    """
    g, nodes, extra, out, feeds = _build(case)
    y = _scalarize(out, rng)
    first = vf.grad(y, nodes)
    probes = [rng.normal(size=n.shape) for n in nodes]
    terms = [vf.sum(d * g.const(p)) for d, p in zip(first, probes)]
    z = terms[0]
    for term in terms[1:]:
        z = z + term
    second = vf.grad(z, nodes, allow_unused=True)  # linear ops have no second derivative
    got = vf.SequentialExecutor(g).run(feeds, second)

    tensors = [torch.tensor(feeds[n], requires_grad=True) for n in nodes]
    extras = [torch.tensor(feeds[n]) for n in extra]
    t_out = case.torch(*tensors, *extras)
    if out.shape != ():
        t_out = (t_out * torch.tensor(g["probe"].value)).sum()
    t_first = torch.autograd.grad(t_out, tensors, create_graph=True, allow_unused=True)
    t_z = sum((d * torch.tensor(p)).sum() for d, p in zip(t_first, probes) if d is not None and d.requires_grad)
    if not isinstance(t_z, torch.Tensor):  # every first derivative is constant: the second is zero
        t_second = [None] * len(tensors)
    else:
        t_second = torch.autograd.grad(t_z, tensors, allow_unused=True)
    for node, value, want in zip(nodes, got, t_second):
        want = np.zeros(node.shape) if want is None else want.numpy(force=True)
        np.testing.assert_allclose(value, want, rtol=1e-7, atol=1e-9, err_msg=node.name)


def _op_samples():
    """An instance and input specs for every op class vertexflow defines (keyed by class name)."""
    from vertexflow.fusion import FusedOp, Group
    from vertexflow.nn.layers import DropoutMask, Mode
    from vertexflow.onnx.convert import SaturatingCast, TruncDivide
    from vertexflow.onnx.elementwise import BitCast
    from vertexflow.onnx.layers import MaxPoolIndices
    from vertexflow.ops import activation, indexing, linalg, nn, norm, quant, reduce, shape, spectral
    from vertexflow.ops import elementwise as ew
    from vertexflow.rewrites import ProductEpilogue

    f, i, b = "float64", "int64", "bool"
    S = vf.Spec
    img, w33 = S((2, 3, 6, 6), f), S((4, 3, 3, 3), f)
    out_conv = S((2, 4, 4, 4), f)
    pooled = S((2, 3, 3, 3), f)
    unary = {cls: (cls(), [S((3, 4), f)]) for cls in (
        ew.Negative, ew.Abs, ew.Sign, ew.Exp, ew.Erf, ew.Log, ew.Sqrt, ew.Tanh, ew.Sigmoid, ew.Relu, ew.LeakyRelu, ew.Clip)}
    unary.update({cls: (cls(), [S((3, 4), f)]) for cls in (
        ew.Sin, ew.Cos, ew.Tan, ew.Arcsin, ew.Arccos, ew.Arctan, ew.Sinh, ew.Cosh, ew.Arcsinh, ew.Arccosh,
        ew.Arctanh, ew.Floor, ew.Ceil, ew.Round, ew.IsNaN, ew.IsInf)})
    unary[ew.LogicalNot] = (ew.LogicalNot(), [S((3, 4), b)])
    unary[ew.BitwiseNot] = (ew.BitwiseNot(), [S((3, 4), i)])
    binary = {cls: (cls(), [S((3, 4), f), S((4,), f)]) for cls in (
        ew.Add, ew.Subtract, ew.Multiply, ew.Divide, ew.Power, ew.Maximum, ew.Minimum, ew.Greater, ew.Less,
        ew.GreaterEqual, ew.LessEqual, ew.Equal, ew.NotEqual, ew.Remainder, TruncDivide)}
    binary.update({cls: (cls(), [S((3, 4), b), S((4,), b)]) for cls in (ew.LogicalAnd, ew.LogicalOr, ew.LogicalXor)})
    binary.update({cls: (cls(), [S((3, 4), i), S((4,), i)]) for cls in (
        ew.BitwiseAnd, ew.BitwiseOr, ew.BitwiseXor, ew.LeftShift, ew.RightShift)})
    samples = {**unary, **binary}
    samples.update({
        ew.Cast: (ew.Cast("float32"), [S((3,), f)]),
        ew.Where: (ew.Where(), [S((3,), b), S((3,), f), S((3,), f)]),
        linalg.Matmul: (linalg.Matmul(), [S((3, 4), f), S((4, 5), f)]),
        reduce.Sum: (reduce.Sum(0), [S((3, 4), f)]),
        reduce.Mean: (reduce.Mean(0), [S((3, 4), f)]),
        reduce.Max: (reduce.Max(0), [S((3, 4), f)]),
        reduce.Min: (reduce.Min(0), [S((3, 4), f)]),
        reduce.Softmax: (reduce.Softmax(), [S((3, 4), f)]),
        reduce.LogSoftmax: (reduce.LogSoftmax(), [S((3, 4), f)]),
        shape.Reshape: (shape.Reshape((4, 3)), [S((3, 4), f)]),
        shape.ReshapeLike: (shape.ReshapeLike(), [S((3, 4), f), S((12,), f)]),
        shape.Transpose: (shape.Transpose(), [S((3, 4), f)]),
        shape.ExpandDims: (shape.ExpandDims(0), [S((3, 4), f)]),
        shape.Squeeze: (shape.Squeeze(0), [S((1, 4), f)]),
        shape.BroadcastTo: (shape.BroadcastTo((2, 3, 4)), [S((3, 4), f)]),
        shape.BroadcastLike: (shape.BroadcastLike(), [S((4,), f), S((3, 4), f)]),
        shape.SumToLike: (shape.SumToLike(), [S((3, 4), f), S((4,), f)]),
        shape.Concat: (shape.Concat(0), [S((3, 4), f), S((2, 4), f)]),
        shape.Segment: (shape.Segment(0, 1), [S((5, 4), f), S((3, 4), f), S((2, 4), f)]),
        shape.Getitem: (shape.Getitem((0, slice(None))), [S((3, 4), f)]),
        shape.GetitemGrad: (shape.GetitemGrad((0,)), [S((4,), f), S((3, 4), f)]),
        shape.Identity: (shape.Identity(), [S((3, 4), f)]),
        shape.Take: (shape.Take(1), [S((3, 4), f), S((2, 5), i)]),
        shape.TakeGrad: (shape.TakeGrad(1), [S((3, 2, 5), f), S((2, 5), i), S((3, 4), f)]),
        shape.ConstantPad: (shape.ConstantPad([(1, 0), (2, 1)]), [S((3, 4), f)]),
        SaturatingCast: (SaturatingCast(np.dtype("float32")), [S((3,), f)]),
        shape.ZerosLike: (shape.ZerosLike(), [S((3, 4), f)]),
        shape.OnesLike: (shape.OnesLike(), [S((3, 4), f)]),
        shape.Count: (shape.Count((0,), f), [S((3, 4), f)]),
        nn.CrossEntropy: (nn.CrossEntropy(), [S((5, 4), f), S((5,), i)]),
        nn.CrossEntropyGrad: (nn.CrossEntropyGrad(), [S((), f), S((5, 4), f), S((5,), i)]),
        nn.OneHot: (nn.OneHot(), [S((5,), i), S((5, 4), f)]),
        nn.MSE: (nn.MSE(), [S((3, 4), f), S((3, 4), f)]),
        activation.Gelu: (activation.Gelu(), [S((3, 4), f)]),
        norm.LayerNorm: (norm.LayerNorm(1), [S((3, 4), f), S((4,), f), S((4,), f)]),
        activation.GeluGrad: (activation.GeluGrad(), [S((3, 4), f), S((3, 4), f)]),
        ew.ReluGrad: (ew.ReluGrad(), [S((3, 4), f), S((3, 4), f)]),
        activation.HardSigmoid: (activation.HardSigmoid(), [S((3, 4), f)]),
        activation.HardSwish: (activation.HardSwish(), [S((3, 4), f)]),
        nn.Conv2d: (nn.Conv2d(), [img, w33]),
        nn.Conv2dGradInput: (nn.Conv2dGradInput(1, 0, 1), [out_conv, w33, img]),
        nn.Conv2dGradWeight: (nn.Conv2dGradWeight(1, 0, 1), [out_conv, img, w33]),
        nn.ConvTranspose2d: (nn.ConvTranspose2d(2, 1, 1, 1, 1), [img, S((3, 2, 3, 3), f)]),
        nn.MaxPool2d: (nn.MaxPool2d(2), [img]),
        nn.MaxPool2dGrad: (nn.MaxPool2dGrad(2), [pooled, img]),
        nn.MaxPool2dSelect: (nn.MaxPool2dSelect(2), [img, img]),
        nn.AvgPool2d: (nn.AvgPool2d(2), [img]),
        nn.AvgPool2dGrad: (nn.AvgPool2dGrad(2), [pooled, img]),
        DropoutMask: (DropoutMask(0.5, 0, Mode()), [S((3, 4), f)]),
        indexing.ArgMax: (indexing.ArgMax(1), [S((3, 4), f)]),
        indexing.TopKIndices: (indexing.TopKIndices(2), [S((3, 4), f)]),
        indexing.CumSum: (indexing.CumSum(1), [S((3, 4), f)]),
        indexing.CumProd: (indexing.CumProd(1), [S((3, 4), f)]),
        indexing.CumProdGrad: (indexing.CumProdGrad(1, False, False), [S((3, 4), f), S((3, 4), f)]),
        indexing.Prod: (indexing.Prod(1), [S((3, 4), f)]),
        indexing.ProdGrad: (indexing.ProdGrad(1, False), [S((3,), f), S((3, 4), f)]),
        indexing.GatherElements: (indexing.GatherElements(1), [S((3, 4), f), S((3, 2), i)]),
        indexing.ScatterElements: (indexing.ScatterElements(1), [S((3, 4), f), S((3, 2), i), S((3, 2), f)]),
        indexing.GatherND: (indexing.GatherND(), [S((3, 4), f), S((5, 2), i)]),
        indexing.ScatterND: (indexing.ScatterND(), [S((3, 4), f), S((2, 1), i), S((2, 4), f)]),
        indexing.OneHotIndices: (indexing.OneHotIndices(4), [S((3,), i), S((2,), f)]),
        indexing.Einsum: (indexing.Einsum("ij,jk->ik"), [S((3, 4), f), S((4, 5), f)]),
        indexing.EinsumGrad: (indexing.EinsumGrad("ij,jk->ik", 0), [S((3, 5), f), S((3, 4), f), S((4, 5), f)]),
        linalg.Det: (linalg.Det(), [S((2, 3, 3), f)]),
        linalg.DetGrad: (linalg.DetGrad(), [S((2,), f), S((2, 3, 3), f), S((2,), f)]),
        BitCast: (BitCast("int64"), [S((3,), f)]),
        MaxPoolIndices: (MaxPoolIndices((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)), [img]),
        spectral.Fourier: (spectral.Fourier(1, 8, onesided=True), [S((2, 6, 2), f)]),
        spectral.FourierAdjoint: (spectral.FourierAdjoint(spectral.Fourier(1, 8), 6, 1), [S((2, 8, 2), f)]),
        quant.Quantize: (quant.Quantize("int8"), [S((3, 4), f), S((4,), f), S((4,), "int8")]),
        quant.Dequantize: (quant.Dequantize(), [S((3, 4), "int8"), S((4,), f), S((4,), "int8")]),
        quant.Requantize: (quant.Requantize("uint8"), [S((3, 4), "int32"), S((4,), f), S((), "uint8")]),
        FusedOp: (_fused_sample(FusedOp, Group), [S((3, 4), f), S((3, 4), f)]),
        ProductEpilogue: (_epilogue_sample(), [S((3, 4), f), S((4, 5), f), S((5,), f)]),
    })
    return {cls.__qualname__: sample for cls, sample in samples.items()}


def _epilogue_sample():
    from vertexflow.rewrites import plan_rewrites

    g = vf.Graph()
    a = g.input("a", shape=(3, 4), dtype="float64")
    w, b = g.param("w", value=np.ones((4, 5))), g.param("b", value=np.ones(5))
    out = vf.relu(vf.matmul(a, w) + b)
    order = vf.SequentialExecutor(g).tape([out]).order
    (op,) = plan_rewrites(order, {n.id: n.spec for n in order}, {out.id}).ops.values()
    return op


def _fused_sample(FusedOp, Group):
    g = vf.Graph()
    a, b = g.input("a", shape=(3, 4), dtype="float64"), g.input("b", shape=(3, 4), dtype="float64")
    out = vf.relu(a + b)
    return FusedOp(Group(out, (out.inputs[0], out), (a, b)), {n.id: n.spec for n in g})


def test_every_op_estimates_its_cost_from_its_own_inputs():
    import vertexflow.fusion  # noqa: F401 - its ops are in the registry too
    import vertexflow.onnx.convert  # noqa: F401

    samples = _op_samples()
    registry = {cls.__qualname__ for cls in vf.ops.builtin_ops()}
    assert registry - set(samples) == set(), "ops without a sample here: add one"
    for name, (op, specs) in samples.items():
        op.infer(*specs)  # the sample is a valid input
        cost = op.cost(*specs)
        assert isinstance(cost, float) and cost >= 0.0, name


@st.composite
def index_case(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    index = []
    array_used = False
    for d in shape:
        kind = draw(st.sampled_from(["int", "slice", "array", "none", "skip"] if not array_used
                                    else ["int", "slice", "none", "skip"]))
        if kind == "int":
            index.append(draw(st.integers(-d, d - 1)))
        elif kind == "slice":
            index.append(slice(draw(st.integers(0, d)), None, draw(st.integers(1, 2))))
        elif kind == "array":
            array_used = True
            index.append(draw(st.lists(st.integers(-d, d - 1), min_size=1, max_size=3)))
        elif kind == "none":
            index.extend([None, slice(None)])
        else:
            index.append(slice(None))
    if draw(st.booleans()) and len(index) > 1:
        index = index[: draw(st.integers(1, len(index)))]
    return shape, tuple(index)


@given(case=index_case())
def test_getitem_shape_rule_follows_numpy(case):
    shape, index = case
    g = vf.Graph()
    x = g.input("x", shape=shape, dtype="float64")
    xv = np.arange(float(np.prod(shape))).reshape(shape)
    want = xv[index]
    node = x[index]
    assert node.shape == want.shape, (shape, index)
    np.testing.assert_array_equal(vf.SequentialExecutor(g).run({x: xv}, node), want)
    vf.check_grad(vf.sum(node * 1.5), [x], {x: xv})


def test_gelu_names_its_two_forms_when_given_another():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(ValueError, match=r"approximate= takes 'none' or 'tanh', got 'fast'"):
        vf.gelu(x, approximate="fast")
    assert len(g) == 1  # nothing was added


@needs_torch
@given(n=st.integers(1, 3), c=st.integers(1, 3), o=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9),
       kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 1),
       dilation=st.integers(1, 2), seed=st.integers(0, 99))
def test_conv_and_pools_of_any_geometry_match_torch_with_gradients(n, c, o, h, w, kh, kw, stride, padding,
                                                                   dilation, seed):
    from hypothesis import assume

    assume(h + 2 * padding >= dilation * (kh - 1) + 1 and w + 2 * padding >= dilation * (kw - 1) + 1)
    rng = np.random.default_rng(seed)
    x_val, w_val = rng.normal(size=(n, c, h, w)), rng.normal(size=(o, c, kh, kw))
    g = vf.Graph()
    x, k = g.input("x", shape=x_val.shape, dtype="float64"), g.param("k", value=w_val)
    conv = vf.conv2d(x, k, stride=stride, padding=padding, dilation=dilation)
    k_pool = max(kh, kw)
    pools = []
    if k_pool <= h + 2 * min(padding, k_pool // 2) and k_pool <= w + 2 * min(padding, k_pool // 2):
        pad = min(padding, k_pool // 2)
        pools = [(vf.max_pool2d(x, k_pool, stride, pad), lambda t: TF.max_pool2d(t, k_pool, stride, pad)),
                 (vf.avg_pool2d(x, k_pool, stride, pad), lambda t: TF.avg_pool2d(t, k_pool, stride, pad))]
    loss = vf.sum(conv * conv) + sum((vf.sum(p * p) for p, _ in pools), start=0.0)
    grads = vf.grad(loss, [x, k])
    got = vf.SequentialExecutor(g).run({x: x_val}, [conv, *[p for p, _ in pools], *grads])
    tx, tk = (torch.tensor(v, requires_grad=True) for v in (x_val, w_val))
    t_conv = TF.conv2d(tx, tk, stride=stride, padding=padding, dilation=dilation)
    t_pools = [f(tx) for _, f in pools]
    t_loss = (t_conv * t_conv).sum() + sum(((p * p).sum() for p in t_pools), start=0.0)
    t_loss.backward()
    want = [t_conv, *t_pools, tx.grad, tk.grad]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-9, atol=1e-10)
