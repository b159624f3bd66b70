"""The compiled kernels against their references: scipy and numpy, torch for convolutions, their numpy twins.

Each kernel is checked in both forms a machine can have: numba's, and the numpy
fallback that runs where numba is missing (forced here by patching
`kernels.available`, the switch `VERTEXFLOW_KERNELS=numpy` sets).
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special as sp_special

import vertexflow as vf
from vertexflow import kernels
from vertexflow.kernels import conv, direct_conv, epilogue, im2col, image_jobs, loss, norm, special
from vertexflow.ops.activation import Gelu, HardSigmoid, HardSwish
from vertexflow.ops.elementwise import Clip
from vertexflow.ops.nn import Conv2d
from vertexflow.ops.norm import LayerNorm
from vertexflow.ops.reduce import Mean, Softmax

try:
    import torch
except ImportError:  # an optional test extra
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install -e '.[test]')")


@pytest.fixture(params=["numba", "numpy"])
def form(request, monkeypatch):
    """Run a test with the compiled kernels, then with their numpy twins."""
    if request.param == "numba" and not kernels.available():
        pytest.skip("numba is not installed")
    if request.param == "numpy":
        for module in (special, conv, epilogue, norm, im2col, loss):
            monkeypatch.setattr(module, "available", lambda: False)
    return request.param


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_float32_erf_is_within_one_ulp_of_the_correctly_rounded_value(form):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-4.5, 4.5, 2_000_000), rng.uniform(-1e-3, 1e-3, 200_000),
                        [0.0, -0.0, 1e-30, -1e-38, 3.9, 4.0, 7.5, 1e30, -np.inf, np.inf]]).astype(np.float32)
    reference = sp_special.erf(x.astype(np.float64)).astype(np.float32)
    got = special.erf32(x)
    assert got.dtype == np.float32
    assert _ulps(got, reference).max() <= 1
    assert np.isnan(special.erf32(np.array([np.nan], np.float32)))[0]


def test_float32_gelu_matches_the_float64_formula(form):
    x = np.random.default_rng(1).normal(scale=3, size=500_000).astype(np.float32)
    v = x.astype(np.float64)
    reference = (0.5 * v * (1 + sp_special.erf(v / np.sqrt(2)))).astype(np.float32)
    got = special.gelu32(x)
    # 1 + erf(x / sqrt 2) cancels for x << 0: there the error is absolute, float32's ulp of 1 at most
    # (from x < -5.66 erf rounds to -1 in float32 and GELU is 0, as torch's float32 GELU gives)
    np.testing.assert_allclose(got, reference, rtol=2e-7, atol=6e-8)
    assert (got[x < -8] == 0).all()
    g = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    cdf, pdf = 0.5 * (1 + sp_special.erf(v / np.sqrt(2))), np.exp(-v * v / 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(special.gelu_grad32(x, g), (g * (cdf + v * pdf)).astype(np.float32),
                               rtol=2e-6, atol=1e-7)


@needs_torch
@settings(max_examples=20, deadline=None)
@given(st.data())
def test_depthwise_convolution_and_its_gradients_equal_torch(data):
    channels = data.draw(st.integers(2, 5), label="channels")
    mult = data.draw(st.integers(1, 2), label="multiplier")
    kh, kw = data.draw(st.sampled_from([(3, 3), (5, 5), (1, 3), (3, 2)]), label="kernel")
    stride = data.draw(st.sampled_from([1, 2]), label="stride")
    padding = data.draw(st.integers(0, 2), label="padding")
    dilation = data.draw(st.sampled_from([1, 2]), label="dilation")
    h = data.draw(st.integers(dilation * (kh - 1) + 1, 12), label="height")
    w = data.draw(st.integers(dilation * (kw - 1) + 1, 12), label="width")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, channels, h, w)).astype(dtype)
    weight = rng.normal(size=(channels * mult, 1, kh, kw)).astype(dtype)
    op = Conv2d(stride, padding, dilation, channels)
    assert op.algorithm(np, x.shape, weight.shape, x.dtype) == "depthwise"
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=channels)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(op.forward(np, x, weight), ty.detach().numpy(), **tol)
    g = rng.normal(size=ty.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    graph = vf.Graph()
    xn, wn = graph.input("x", shape=x.shape, dtype=dtype), graph.param("w", value=weight)
    loss = vf.sum(vf.conv2d(xn, wn, stride, padding, dilation, channels) * graph.const(g))
    _, grads = vf.SequentialExecutor(graph).backward({xn: x}, loss, [xn, wn])
    np.testing.assert_allclose(grads[xn], tx.grad.numpy(), **tol)
    np.testing.assert_allclose(grads[wn], tw.grad.numpy(), **tol)


@needs_torch
@pytest.mark.parametrize("geometry", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 3), (3, 1, 0), (5, 1, 1), (7, 1, 3)])
def test_the_generated_depthwise_kernels_equal_torch(form, geometry):
    """The geometries with a kernel of their own (and, in the numpy form, the per-tap passes): at
    stride 1 with "same" padding (3, 1, 1) the kernel of `_same_source`, with other padding the
    padded buffer's."""
    k, stride, padding = geometry
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 6, 15, 13)).astype(np.float32)
    weight = rng.normal(size=(6, 1, k, k)).astype(np.float32)
    got = Conv2d(stride, padding, 1, 6).forward(np, x, weight)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), stride=stride, padding=padding, groups=6)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


@needs_torch
def test_a_same_padded_depthwise_kernel_keeps_a_rows_infinities_out_of_the_next_row():
    """The "same" kernel reads a plane without padded columns: the tap past a row's end is the next
    row's first value, replaced by zero. An infinity or a NaN at a row's edge reaches only the outputs
    whose windows hold it, as in torch's padded convolution."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
    x[0, 0, 2, -1], x[0, 1, 4, 0], x[1, 2, 0, 0] = np.inf, np.nan, -np.inf
    weight = rng.normal(size=(3, 1, 3, 3)).astype(np.float32)
    got = Conv2d(1, 1, 1, 3).forward(np, x, weight)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding=1, groups=3).numpy()
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("code, dtype", [(code, dtype) for code in (epilogue.NONE, epilogue.CLIP, epilogue.HARD_SWISH)
                                         for dtype in ("float32", "float64")] + [(epilogue.GELU, "float32")])
@pytest.mark.parametrize("geometry", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (4, 1, 2), (3, 1, 0)])
def test_a_depthwise_kernel_runs_the_epilogue_with_the_bits_of_its_pass_after(code, dtype, geometry):
    """The generated depthwise kernels (3x3 and 5x5, stride 1 and 2; "same" padding and other) run the
    bias and the activation as each plane is stored; GELU (float32 only: the rewrite's choice), whose
    pass has flags of its own, and windows without a generated kernel (4x4) take the pass after. The
    same bits either way."""
    size, stride, padding = geometry
    rng = np.random.default_rng(size * 10 + stride)
    x = rng.normal(size=(3, 5, 11, 13)).astype(dtype)
    weight = rng.normal(size=(10, 1, size, size)).astype(dtype)  # two outputs a channel
    bias = rng.normal(size=(10, 1, 1)).astype(dtype)
    p0, p1 = {epilogue.CLIP: (0.0, 6.0), epilogue.HARD_SWISH: (1 / 6, 0.5)}.get(code, (0.0, 0.0))
    geometry = ((stride, stride), (padding, padding), (1, 1))
    alone = conv.depthwise(x, weight, *geometry, pad=lambda a: Conv2d(*geometry)._padded(np, a))
    fused = conv.depthwise(x, weight, *geometry, pad=lambda a: Conv2d(*geometry)._padded(np, a),
                           epilogue=(bias, code, p0, p1))
    np.testing.assert_array_equal(fused, epilogue.bias_activation(alone, bias, 1, code, p0, p1))


@needs_torch
@settings(max_examples=25, deadline=None)
@given(st.data())
def test_convolutions_by_image_columns_and_their_gradients_equal_torch(data):
    """Any geometry through the per-image column kernels: forward, the input gradient (the transposed
    convolution's kernel too) and the weight gradient, against torch."""
    groups = data.draw(st.sampled_from([1, 2]), label="groups")
    cin = groups * data.draw(st.integers(1, 3), label="channels per group")
    cout = groups * data.draw(st.integers(1, 3), label="outputs per group")
    kh, kw = data.draw(st.sampled_from([(3, 3), (1, 3), (2, 2), (5, 4), (1, 9)]), label="kernel")
    stride = data.draw(st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 1)]), label="stride")
    padding = data.draw(st.sampled_from([(0, 0), (1, 1), (2, 0), (0, 4)]), label="padding")
    dilation = data.draw(st.sampled_from([(1, 1), (2, 1), (2, 2)]), label="dilation")
    h = data.draw(st.integers(dilation[0] * (kh - 1) + 1, 20), label="height")
    w = data.draw(st.integers(dilation[1] * (kw - 1) + 1, 20), label="width")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    batch = data.draw(st.integers(1, 5), label="batch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, cin, h, w)).astype(dtype)
    weight = rng.normal(size=(cout, cin // groups, kh, kw)).astype(dtype)
    op = Conv2d(stride, padding, dilation, groups)
    if cin // groups > 1 or groups == 1:  # (one channel per group is the depthwise kernel's)
        assert op.algorithm(np, x.shape, weight.shape, x.dtype) == "columns"
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(weight, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(op.forward(np, x, weight), ty.detach().numpy(), **tol)
    g = rng.normal(size=ty.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    graph = vf.Graph()
    xn, wn = graph.input("x", shape=x.shape, dtype=dtype), graph.param("w", value=weight)
    loss = vf.sum(vf.conv2d(xn, wn, stride, padding, dilation, groups) * graph.const(g))
    _, grads = vf.SequentialExecutor(graph).backward({xn: x}, loss, [xn, wn])
    np.testing.assert_allclose(grads[xn], tx.grad.numpy(), **tol)
    np.testing.assert_allclose(grads[wn], tw.grad.numpy(), **tol)


@needs_torch
@settings(max_examples=30, deadline=None)
@given(st.data())
def test_direct_convolutions_equal_torch_and_carry_the_epilogues_bits(data):
    """The direct kernel over drawn geometries: output channels that do not fill the last block (4 or 8)
    and rows that do not fill the last block of 8 or 16 (blocks that overlap the one before), strides
    (the buffer's phases), padding and dilation, against torch; with a bias and an activation, the
    bits of the epilogue's own pass after it."""
    cin = data.draw(st.integers(1, 6), label="channels")
    cout = data.draw(st.integers(4, 13), label="outputs")
    kh, kw = data.draw(st.sampled_from([(3, 3), (1, 9), (5, 5), (2, 3), (1, 1)]), label="kernel")
    stride = data.draw(st.sampled_from([(1, 1), (2, 2), (1, 2), (3, 1), (1, 3)]), label="stride")
    padding = data.draw(st.sampled_from([(0, 0), (1, 1), (0, 4), (2, 1)]), label="padding")
    dilation = data.draw(st.sampled_from([(1, 1), (2, 1), (1, 2)]), label="dilation")
    h = data.draw(st.integers(dilation[0] * (kh - 1) + 1, 12), label="height")
    least = max(1, dilation[1] * (kw - 1) + 1 + stride[1] * 7 - 2 * padding[1])  # at least 8 outputs a row
    w = data.draw(st.integers(least, least + 30), label="width")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    batch = data.draw(st.integers(1, 4), label="batch")
    code = data.draw(st.sampled_from([epilogue.NONE, epilogue.CLIP, epilogue.HARD_SWISH]
                                     + ([epilogue.GELU] if dtype == "float32" else [])), label="activation")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(batch, cin, h, w)).astype(dtype)
    weight = rng.normal(size=(cout, cin, kh, kw)).astype(dtype)
    bias = rng.normal(size=cout).astype(dtype)
    op = Conv2d(stride, padding, dilation)
    ow = op._out_hw(h, w, (kh, kw))[1]
    # rows of 8 to 15 take blocks of 8 channels: fewer take the columns' product
    lanes = direct_conv.lanes_for(ow)
    assume(lanes > 0 and cout >= direct_conv.BLOCKS[lanes])
    if ((kh, kw) != (1, 1) or padding != (0, 0)) and direct_conv.usable(dtype, cout, ow, 1, stride[1], cin * kh * kw):
        assert op.algorithm(np, x.shape, weight.shape, x.dtype) == "direct"
    got = direct_conv.conv2d(x, weight, stride, padding, dilation)  # (strided with few taps too: it is correct)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), stride=stride, padding=padding,
                                      dilation=dilation).numpy()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got, want, **tol)
    p0, p1 = {epilogue.CLIP: (0.0, 6.0), epilogue.HARD_SWISH: (1 / 6, 0.5)}.get(code, (0.0, 0.0))
    fused = direct_conv.conv2d(x, weight, stride, padding, dilation, None, bias, code, p0, p1)
    np.testing.assert_array_equal(fused, epilogue.bias_activation(got, bias, 1, code, p0, p1))


@needs_torch
@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 1), (1, 3)])
@pytest.mark.parametrize("code, dtype", [(epilogue.NONE, "float32"), (epilogue.CLIP, "float32"),
                                         (epilogue.GELU, "float32"), (epilogue.NONE, "float64"),
                                         (epilogue.HARD_SWISH, "float64")])  # (GELU's epilogue is float32's)
def test_a_transposed_convolution_of_tiles_apart_equals_torch_with_its_epilogues_bits(kernel, code, dtype):
    """kernel = stride: each input pixel's tile of outputs, a 1x1 convolution's channels moved to their
    place, against torch; the epilogue run as they move (GELU's pass after) gives the pass's bits."""
    from vertexflow.ops.nn import ConvTranspose2d

    rng = np.random.default_rng(sum(kernel))
    x = rng.normal(size=(3, 5, 7, 9)).astype(dtype)
    weight = rng.normal(size=(5, 6, *kernel)).astype(dtype)
    bias = rng.normal(size=(6, 1, 1)).astype(dtype)
    op = ConvTranspose2d(stride=kernel)
    assert op.runs_epilogue(np, x.shape, weight.shape, x.dtype)
    got = op.forward(np, x, weight)
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(weight), stride=kernel).numpy()
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got, want, **tol)
    p0, p1 = {epilogue.CLIP: (0.0, 6.0), epilogue.HARD_SWISH: (1 / 6, 0.5)}.get(code, (0.0, 0.0))
    fused = op.forward(np, x, weight, epilogue=(bias, code, p0, p1))
    np.testing.assert_array_equal(fused, epilogue.bias_activation(got.copy(), bias, 1, code, p0, p1))
    assert not ConvTranspose2d(stride=2, padding=1).runs_epilogue(np, x.shape, (5, 6, 2, 2), x.dtype)


@needs_torch
@pytest.mark.parametrize("blocks", [4, 8])
def test_the_direct_kernel_with_either_block_for_16_lanes_equals_torch(blocks, monkeypatch):
    """Blocks of 16 output pixels hold 4 output channels where the CPU has 16 vector registers (AVX2),
    8 where it has 32 (AVX-512; `direct_conv._blocks`): either against torch, with channels that do
    not fill the last block, and the epilogue's bits."""
    monkeypatch.setitem(direct_conv.BLOCKS, 16, blocks)
    direct_conv._module.cache_clear()  # (its modules are made for the block in force)
    try:
        rng = np.random.default_rng(blocks)
        x = rng.normal(size=(2, 3, 9, 21)).astype(np.float32)
        weight = rng.normal(size=(blocks + 3, 3, 3, 3)).astype(np.float32)
        bias = rng.normal(size=blocks + 3).astype(np.float32)
        got = direct_conv.conv2d(x, weight, (1, 1), (1, 1), (1, 1))
        want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding=1).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        fused = direct_conv.conv2d(x, weight, (1, 1), (1, 1), (1, 1), None, bias, epilogue.CLIP, 0.0, 6.0)
        np.testing.assert_array_equal(fused, epilogue.bias_activation(got, bias, 1, epilogue.CLIP, 0.0, 6.0))
    finally:
        direct_conv._module.cache_clear()


def test_the_direct_kernel_refuses_a_geometry_its_blocks_would_write_past():
    """Rows narrower than 8 outputs, or fewer channels than a block, are not its (`usable` says no and
    the op takes the columns); called anyway, it raises vertexflow's internal error, writing nothing."""
    from vertexflow.errors import InternalError

    x = np.ones((1, 2, 5, 5), np.float32)
    assert not direct_conv.usable(x.dtype, 4, 5, 1)
    assert Conv2d(1, 1).algorithm(np, x.shape, (4, 2, 3, 3), x.dtype) == "columns"
    with pytest.raises(InternalError, match="rows of 8 outputs or more"):
        direct_conv.conv2d(x, np.ones((4, 2, 3, 3), np.float32), (1, 1), (1, 1), (1, 1))
    with pytest.raises(InternalError, match="as many channels as a block: got 9 and 6"):
        direct_conv.conv2d(np.ones((1, 2, 5, 9), np.float32), np.ones((6, 2, 3, 3), np.float32), (1, 1), (1, 1),
                           (1, 1))


def test_the_slp_vectorizer_is_on_only_while_the_direct_kernels_compile():
    """numba keeps its SLP vectorizer off (numba#8852): the direct kernels' module asks for it, and it
    is on while such a module is imported, then as it was, also when the import fails."""
    from numba.core import config

    from vertexflow.kernels import generated

    before = config.SLP_VECTORIZE
    with pytest.raises(ZeroDivisionError):
        with generated._slp_vectorizer():
            assert config.SLP_VECTORIZE
            raise ZeroDivisionError
    assert config.SLP_VECTORIZE == before
    with mock.patch.object(direct_conv, "module") as compile_module:
        direct_conv._module.__wrapped__(16, epilogue.NONE, np.dtype(np.float32))
    assert compile_module.call_args.kwargs == {"slp": True}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_compiled_pooling_gives_the_bits_of_numpys_passes_and_keeps_nan(data):
    """Max and average pooling at stride 1 over drawn windows, paddings and dilations: the compiled pass
    (`kernels/pool.py`) against the numpy form's pass per tap, to the bit, NaN and infinities included;
    and the maximum against torch where it is installed."""
    from vertexflow.ops.nn import AvgPool2d, MaxPool2d

    kh, kw = data.draw(st.sampled_from([(2, 2), (3, 3), (1, 3), (3, 2), (3, 5)]), label="kernel")
    stride = (1, 1)  # (the compiled pass's; other strides take numpy's passes)
    dilation = data.draw(st.sampled_from([(1, 1), (2, 1)]), label="dilation")
    padding = (data.draw(st.integers(0, kh // 2), label="pad h"), data.draw(st.integers(0, kw // 2), label="pad w"))
    h = data.draw(st.integers(dilation[0] * (kh - 1) + 1, 14), label="height")
    w = data.draw(st.integers(dilation[1] * (kw - 1) + 2, 14), label="width")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    rng = np.random.default_rng(6)
    x = rng.normal(size=(data.draw(st.integers(1, 3), label="batch"), 3, h, w)).astype(dtype)
    x.flat[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
    for op, combine in ((MaxPool2d((kh, kw), stride, padding, dilation), np.maximum),
                        (AvgPool2d((kh, kw), stride, padding, dilation), np.add)):
        assert op._compiled(np, x)
        fill = -np.inf if combine is np.maximum else 0.0
        with np.errstate(invalid="ignore"):  # inf + -inf in a window: NaN, as the compiled sum gives
            want = op._reduce_taps(np, x, op.kernel, combine, fill=fill)
            if combine is np.add:
                want /= want.dtype.type(kh * kw)
        np.testing.assert_array_equal(op.forward(np, x), want)
    if torch is not None:
        np.testing.assert_array_equal(MaxPool2d((kh, kw), stride, padding, dilation).forward(np, x),
                                      torch.nn.functional.max_pool2d(torch.tensor(x), (kh, kw), stride, padding,
                                                                     dilation).numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [(16, 16), (7, 5), (1, 1)])
def test_a_global_average_pool_is_each_planes_mean(dtype, size):
    """A window over the whole image (an inception head's) takes the mean kernel over each plane."""
    from vertexflow.ops.nn import AvgPool2d

    x = np.random.default_rng(8).normal(size=(3, 5, *size)).astype(dtype)
    got = AvgPool2d(size).forward(np, x)
    assert got.shape == (3, 5, 1, 1)
    tol = 1e-6 if dtype == "float32" else 1e-14  # (absolute: a mean near zero is a sum that cancelled)
    np.testing.assert_allclose(got[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=tol, atol=tol)


@needs_torch
@pytest.mark.parametrize("kernel, dilation", [((3, 3), 1), ((5, 5), 1), ((7, 3), 1), ((3, 5), 2), ((1, 7), 1)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (6, 2), (9, 16)])
def test_a_same_size_convolution_copies_whole_taps_and_equals_torch(kernel, dilation, size):
    """Stride 1 with the output as wide as the input: the column kernel copies a tap's rows as one run
    and zeroes the clipped ends after; taps wholly outside a small image take the per-row path."""
    kh, kw = kernel
    padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    rng = np.random.default_rng(kh * 10 + kw)
    x = rng.normal(size=(2, 3, *size)).astype(np.float32)
    weight = rng.normal(size=(4, 3, kh, kw)).astype(np.float32)
    got = Conv2d(1, padding, dilation).forward(np, x, weight)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding=padding, dilation=dilation)
    assert got.shape == want.shape and got.shape[3] == size[1]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.parametrize("threads", [1, 2])
def test_a_convolution_split_over_threads_gives_the_bits_of_one_thread(threads, monkeypatch):
    """Images are split over the threads BLAS may use; every product is single-threaded, so the split
    never changes a bit (the executors' parity depends on it)."""
    from vertexflow import machine

    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 8, 12, 12)).astype(np.float32)
    weight = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    monkeypatch.setattr(im2col, "MIN_SPLIT_FLOPS", 1.0)  # split even this small work
    with machine.blas_threads(threads):
        got = Conv2d(1, 1).forward(np, x, weight)
        pointwise = Conv2d().forward(np, x, weight[:, :, :1, :1].copy())
    with machine.blas_threads(1):
        want = Conv2d(1, 1).forward(np, x, weight)
        want_pointwise = Conv2d().forward(np, x, weight[:, :, :1, :1].copy())
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pointwise, want_pointwise)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), padding=1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.parametrize("classes", [1, 10, 64, 65])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_and_its_gradient_equal_torch(form, classes, dtype):
    """Few classes take the row kernels (numba form), many take numpy's passes: both equal torch."""
    rng = np.random.default_rng(8)
    logits = (rng.normal(size=(37, classes)) * 5).astype(dtype)
    labels = rng.integers(0, classes, 37)
    graph = vf.Graph()
    z, y = graph.param("z", value=logits), graph.input("y", shape=(37,), dtype="int64")
    value, grads = vf.SequentialExecutor(graph).backward({y: labels}, vf.cross_entropy(z, y) * 3.0)
    tz = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(tz, torch.tensor(labels)) * 3.0
    want.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)
    assert value.dtype == np.dtype(dtype)
    np.testing.assert_allclose(value, want.item(), **tol)
    np.testing.assert_allclose(grads[z], tz.grad.numpy(), **tol)
    labels[5] = classes  # out of range: refused, whichever form runs
    with pytest.raises(vf.VertexError, match=rf"labels must lie in \[0, {classes}\)"):
        vf.SequentialExecutor(graph).run({y: labels}, vf.cross_entropy(z, y))


def test_products_of_stacked_and_transposed_operands_equal_numpy():
    """(..., k) @ (k, n) as one product, and a few rows times a transposed matrix computed transposed."""
    from vertexflow.ops.linalg import Matmul

    rng = np.random.default_rng(5)
    op = Matmul()
    a = rng.normal(size=(4, 6, 5)).astype(np.float32)
    b = rng.normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(op.forward(np, a, b), np.matmul(a, b), rtol=1e-6)
    out = np.empty((4, 6, 7), np.float32)
    assert op.forward(np, a, b, out=out) is out
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-6)
    rows = rng.normal(size=(16, 32)).astype(np.float32)  # more rows than kernels/products.py takes
    weight = rng.normal(size=(40, 32)).astype(np.float32)
    got = op.forward(np, rows, weight.T)
    assert got.flags.f_contiguous and not got.flags.c_contiguous  # computed transposed, handed on so
    np.testing.assert_allclose(got, rows @ weight.T, rtol=1e-5)
    out = np.empty((16, 40), np.float32)
    value = op.forward(np, rows, weight.T, out=out)
    assert value.base is out  # out's memory, in column-major order
    np.testing.assert_array_equal(value, got)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), inner=st.integers(1, 9), cols=st.integers(1, 90),
       a_order=st.sampled_from("CF"), b_order=st.sampled_from("CF"), out_order=st.sampled_from(["C", "F", None]),
       dtype=st.sampled_from(["float32", "float64"]))
def test_a_product_computed_transposed_equals_numpy_whatever_the_layouts(rows, inner, cols, a_order, b_order,
                                                                          out_order, dtype):
    from vertexflow.ops.linalg import Matmul, computes_transposed

    rng = np.random.default_rng(rows * 1000 + cols)
    a = np.asarray(rng.normal(size=(rows, inner)), dtype, order=a_order)
    b = np.asarray(rng.normal(size=(inner, cols)), dtype, order=b_order)
    out = None if out_order is None else np.empty((rows, cols), dtype, order=out_order)
    value = Matmul().forward(np, a, b, out=out)
    np.testing.assert_allclose(value, np.matmul(a, b), rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)
    assert value.shape == (rows, cols) and value.dtype == dtype
    if out is not None:
        assert value is out or value.base is out  # written into out's memory
    if computes_transposed(rows, cols) and b_order == "F" and inner > 1:
        assert value.flags.f_contiguous


@pytest.mark.parametrize("code", [epilogue.NONE, epilogue.CLIP, epilogue.HARD_SIGMOID, epilogue.HARD_SWISH])
@pytest.mark.parametrize("shape, axis", [((7, 33), 1), ((7, 33), 0), ((3, 5, 4), 1)])
def test_the_epilogue_on_a_column_major_value_equals_the_row_major_one_bitwise(code, shape, axis):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype(np.float32)
    bias = rng.normal(size=shape[axis]).astype(np.float32)
    row_major = epilogue.bias_activation(x.copy(), bias, axis, code, 1 / 6, 0.5)
    column_major = np.asfortranarray(x)
    got = epilogue.bias_activation(column_major, bias, axis, code, 1 / 6, 0.5)
    assert got is column_major and got.flags.f_contiguous
    np.testing.assert_array_equal(got, row_major)


def test_a_pooled_buffer_for_an_elementwise_op_is_laid_out_as_its_input():
    from vertexflow.memory import BufferPool

    pool = BufferPool()
    column_major = np.asfortranarray(np.ones((300, 200), np.float32))
    buffer = pool.take_like((300, 200), np.dtype(np.float32), 2.0, column_major)
    assert buffer.shape == (300, 200) and buffer.flags.f_contiguous and not buffer.flags.c_contiguous
    assert pool.take_like((300, 200), np.dtype(np.float32), np.ones((300, 200), np.float32)).flags.c_contiguous
    del buffer  # its view held the pool's buffer: let go, it is reused
    assert pool.take((300, 200), np.dtype(np.float32)) is not None and pool.reused == 1


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data())
def test_a_pooled_buffer_takes_the_axis_order_of_a_permuted_input(shape, data):
    """An attention's keys transposed, (B, H, D, T) as a view of (B, T, H, D), scaled: the buffer for
    an elementwise op on them (and scalars) has their memory order (the same strides), so numpy walks
    both arrays in one order; beside a row-major array of their shape, and for a strided slice (not
    dense), a row-major buffer."""
    from vertexflow.memory import BufferPool

    perm = data.draw(st.permutations(range(len(shape))), label="axes")
    base = np.zeros(shape, np.float64)
    permuted = base.transpose(perm)
    buffer = BufferPool().take_like(permuted.shape, np.dtype(np.float32), permuted)
    assert buffer.shape == permuted.shape and buffer.dtype == np.float32
    steps = [(b // 4, p // 8) for b, p, n in zip(buffer.strides, permuted.strides, permuted.shape) if n > 1]
    assert all(b == p for b, p in steps)  # (an axis of one element has any stride)
    np.multiply(permuted, 2.0, out=buffer)  # (a writable buffer of that shape)
    scaled = BufferPool().take_like(permuted.shape, np.dtype(np.float32), permuted, np.float32(2), np.ones(1))
    assert [b // 4 for b, n in zip(scaled.strides, shape) if n > 1] == [b // 4 for b, n in zip(buffer.strides, shape)
                                                                         if n > 1]
    beside = BufferPool().take_like(permuted.shape, np.dtype(np.float32), permuted, np.ones(permuted.shape))
    assert beside.flags.c_contiguous or permuted.flags.f_contiguous  # (a column-major first input's order stays)
    sliced = np.zeros([2 * n for n in shape])[tuple(slice(None, None, 2) for _ in shape)]
    assert BufferPool().take_like(sliced.shape, np.dtype(np.float64), sliced).flags.c_contiguous


@needs_torch
@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_convolution_is_one_product_per_image_and_equals_torch(stride):
    rng = np.random.default_rng(4)
    x, weight = rng.normal(size=(3, 5, 7, 6)), rng.normal(size=(4, 5, 1, 1))
    op = Conv2d(stride)
    assert op.algorithm(np, x.shape, weight.shape, x.dtype) == "pointwise"
    out = np.empty((3, 4, *op.forward(np, x, weight).shape[2:]))
    assert op.forward(np, x, weight, out=out) is out
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), stride=stride)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not image_jobs.usable((2, 1, 2, 1), (2, 1, 1, 1), 1, (2, 1), np.float32),
                    reason="numba and numpy's ILP64 OpenBLAS")
@settings(max_examples=40, deadline=None)
@given(images=st.integers(2, 5), channels=st.integers(1, 12), outs=st.integers(2, 12), size=st.integers(2, 11),
       k=st.sampled_from([1, 1, 2, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       groups=st.sampled_from([1, 1, 2]), dtype=st.sampled_from([np.float32, np.float64]),
       code=st.sampled_from([epilogue.NONE, epilogue.CLIP, epilogue.HARD_SWISH]), split=st.booleans(),
       seed=st.integers(0, 2**16))
def test_a_convolutions_image_jobs_give_numpys_products_bits_and_the_epilogue_of_the_pass_after(
        images, channels, outs, size, k, stride, padding, groups, dtype, code, split, seed):
    """`kernels/image_jobs.py` (1x1 and column convolutions): each image's gemm from the compiled jobs is
    the routine numpy's matmul calls on one BLAS thread, split over the team or not; its epilogue has
    the bits of the pass after."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((images, channels * groups, size, size)).astype(dtype)
    w = rng.standard_normal((outs * groups, channels, k, k)).astype(dtype)
    bias = rng.standard_normal((outs * groups, 1, 1)).astype(dtype)
    p0, p1 = {epilogue.CLIP: (0.0, 0.5), epilogue.HARD_SWISH: (1 / 6, 0.5)}.get(code, (0.0, 0.0))
    out_size = (size + 2 * padding - k) // stride + 1
    assume(out_size > 1)  # (one output pixel: numpy's gemv, which the jobs leave to numpy)
    op = Conv2d(stride, padding, 1, groups)
    assume(op.algorithm(np, x.shape, w.shape, x.dtype) in ("pointwise", "columns"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_jobs, "MIN_PART_FLOPS", 1.0 if split else 1e30)
        assert op.runs_epilogue(np, x.shape, w.shape, x.dtype)
        got = op.forward(np, x, w)
        fused = op.forward(np, x, w, epilogue=(bias, code, p0, p1))
        patch.setattr(image_jobs, "usable", lambda *shapes_and_dtype: False)  # numpy's, or Python parts'
        expected = op.forward(np, x, w)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(fused, epilogue.bias_activation(expected, bias, 1, code, p0, p1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_row_softmax_and_layer_norm_equal_numpy(form, dtype):
    x = np.random.default_rng(5).normal(scale=4, size=(6, 7, 33)).astype(dtype)
    x[0, 0, 3] = np.nan
    e = np.exp(x - x.max(-1, keepdims=True))
    reference = e / e.sum(-1, keepdims=True)
    got = Softmax(-1).forward(np, x)
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(got, reference, rtol=tol, atol=tol)
    assert np.isnan(got[0, 0]).all() and not np.isnan(got[1:]).any()
    weight, bias = np.linspace(0.5, 2, 33).astype(dtype), np.linspace(-1, 1, 33).astype(dtype)
    ln = LayerNorm(1, 1e-5).forward(np, x[1:], weight, bias)
    mu = x[1:].mean(-1, keepdims=True)
    want = (x[1:] - mu) / np.sqrt(((x[1:] - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * weight + bias
    np.testing.assert_allclose(ln, want, rtol=20 * tol, atol=20 * tol)


def test_the_float32_softmaxs_exp_is_within_an_ulp_of_float64s_rounded():
    if not kernels.available():
        pytest.skip("numba is not installed")
    from vertexflow.kernels import norm_jobs

    rng = np.random.default_rng(11)
    special_points = [0.0, -0.0, -1e-8, -0.5, -87.33, -87.34, -88.0, -100.0, -103.97, -103.98, -104.0, -200.0]
    t = np.concatenate([special_points, -rng.exponential(20.0, 1_000_000), rng.uniform(-104, 0, 100_000)])
    t = t.astype(np.float32)
    got = np.empty_like(t)
    norm_jobs.exp_of(t, got)
    want = np.exp(t.astype(np.float64)).astype(np.float32)
    assert _ulps(got, want).max() <= 1  # denormal results too (scaled in two steps, rounded once)
    assert (_ulps(got, want) == 0).mean() > 0.9
    odd = np.array([np.nan, -np.inf, np.float32(-np.nan)], np.float32)
    out = np.empty_like(odd)
    norm_jobs.exp_of(odd, out)
    assert np.isnan(out[0]) and out[1] == 0.0 and np.isnan(out[2])


def test_a_float32_softmax_split_over_the_team_gives_the_bits_of_one_part(monkeypatch):
    if not kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(257, 64)) * 5).astype(np.float32)
    x[3, 5], x[4] = np.nan, -np.inf  # rows that come out NaN, as numpy's
    x[5, 7] = np.inf
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 10**9)
    one = norm.softmax_last(x)
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 64)
    split = norm.softmax_last(x)
    np.testing.assert_array_equal(split.view(np.int32), one.view(np.int32))
    with np.errstate(invalid="ignore"):
        e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
        want = e / e.sum(-1, keepdims=True)
    np.testing.assert_array_equal(np.isnan(one), np.isnan(want))
    # x - max in float32 (as numpy's softmax): its rounding, up to |x - max| * 2^-24, is the result's
    np.testing.assert_allclose(one[6:], want[6:], rtol=5e-6, atol=1e-30)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), dtype=st.sampled_from(["float32", "float64"]),
       keepdims=st.booleans(), given_out=st.booleans(), trailing=st.integers(1, 3))
def test_a_mean_over_the_last_axes_equals_numpys_to_rounding(shape, dtype, keepdims, given_out, trailing):
    """Over the last axis or the last few (a global average pool's (2, 3)), the row kernel's mean; over
    every axis, numpy's."""
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    x = (rng.normal(size=shape) * 10 + 3).astype(dtype)
    axes = tuple(range(max(0, len(shape) - trailing), len(shape)))
    want = x.mean(axis=axes, keepdims=keepdims)
    out = np.empty(want.shape, dtype) if given_out and want.ndim else None
    got = Mean(axes, keepdims).forward(np, x, out=out)
    assert got.shape == want.shape and got.dtype == want.dtype and (out is None or got is out)
    count = math.prod(x.shape[k] for k in axes)
    bound = np.abs(x).mean(axis=axes, keepdims=keepdims) * count * np.finfo(dtype).eps
    assert (np.abs(got - x.astype(np.float64).mean(axis=axes, keepdims=keepdims)) <= bound).all()


def test_a_mean_split_over_the_team_gives_the_bits_of_one_part_and_keeps_nan_and_infinity(monkeypatch):
    if not kernels.available():
        pytest.skip("numba is not installed")
    x = np.random.default_rng(6).normal(size=(9, 31, 50)).astype(np.float32)
    x[0, 0, 4], x[0, 1, 7], x[0, 2, :2] = np.nan, np.inf, [np.inf, -np.inf]
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 10**9)
    one = Mean(2, True).forward(np, x)
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 50)
    split = Mean(2, True).forward(np, x)
    np.testing.assert_array_equal(split.view(np.int32), one.view(np.int32))
    assert np.isnan(one[0, 0, 0]) and one[0, 1, 0] == np.inf and np.isnan(one[0, 2, 0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_layer_norm_split_over_the_team_gives_the_bits_of_one_part(dtype, monkeypatch):
    if not kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(129, 96)).astype(dtype)
    weight, bias = rng.normal(size=96).astype(dtype), rng.normal(size=96).astype(dtype)
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 10**9)
    one = norm.layer_norm_last(x, weight, bias, 1e-5)
    monkeypatch.setattr(norm, "MIN_JOB_ELEMENTS", 96)
    split = norm.layer_norm_last(x, weight, bias, 1e-5)
    np.testing.assert_array_equal(split, one)
    mu = x.mean(-1, keepdims=True)
    want = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * weight + bias
    np.testing.assert_allclose(one, want, rtol=2e-5 if dtype == "float32" else 1e-12, atol=2e-5 if dtype == "float32" else 1e-12)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), n=st.integers(1, 300), offset=st.sampled_from([0.0, 10.0, -1000.0]),
       scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_a_float32_layer_norm_is_accurate_to_a_few_ulps_of_its_input_however_far_from_zero(rows, n, offset, scale):
    """Statistics in float32, as torch's CPU kernel: two passes keep a row far from zero accurate (one
    pass, E[x^2] - E[x]^2, loses every digit at an offset of 1000)."""
    rng = np.random.default_rng(rows * 1000 + n)
    x = (rng.normal(size=(rows, n)) * scale + offset).astype(np.float32)
    weight, bias = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    got = LayerNorm(1, 1e-5).forward(np, x, weight, bias)
    assert got.dtype == np.float32
    x64 = x.astype(np.float64)
    centered = x64 - x64.mean(-1, keepdims=True)
    want = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5) * weight + bias
    spread = np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
    bound = 16 * np.finfo(np.float32).eps * ((abs(offset) + scale) / spread * np.abs(weight) + np.abs(bias) + 1)
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("code", [epilogue.NONE, epilogue.CLIP, epilogue.HARD_SIGMOID, epilogue.HARD_SWISH,
                                  epilogue.GELU])
@pytest.mark.parametrize("axis", [1, 2])
def test_an_epilogue_pass_gives_the_bits_of_the_separate_passes(form, code, axis):
    """act(out + bias) in one pass: the same float operations as numpy's add, then the op's forward."""
    rng = np.random.default_rng(6)
    out = rng.normal(scale=5, size=(4, 9, 11)).astype(np.float32)
    out[0, 0, :3] = [np.nan, -0.0, np.inf]
    bias = rng.normal(size=out.shape[axis]).astype(np.float32)
    shaped = bias.reshape((-1, 1) if axis == 1 else (-1,))
    separate = out + shaped
    ops = {epilogue.CLIP: Clip(-1.5, 2.0), epilogue.HARD_SIGMOID: HardSigmoid(), epilogue.HARD_SWISH: HardSwish(),
           epilogue.GELU: Gelu()}
    params = {epilogue.CLIP: (-1.5, 2.0), epilogue.HARD_SIGMOID: (1 / 6, 0.5), epilogue.HARD_SWISH: (1 / 6, 0.5)}
    if code in ops:
        separate = ops[code].forward(np, separate)
    got = epilogue.bias_activation(out.copy(), bias, axis, code, *params.get(code, (0.0, 0.0)))
    np.testing.assert_array_equal(got.view(np.int32), separate.view(np.int32))


def test_generated_kernels_are_written_to_the_cache_folder_not_the_package(tmp_path, monkeypatch):
    from vertexflow.kernels import generated

    monkeypatch.setenv("VERTEXFLOW_CACHE_DIR", str(tmp_path))
    module = generated.module("probe", "VALUE = 41 + 1\n")
    assert module.VALUE == 42
    assert [p.name.startswith("vf_probe_") for p in (tmp_path / "kernels").glob("*.py")] == [True]
    assert generated.module("probe", "VALUE = 41 + 1\n") is module  # made once


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), dtype=st.sampled_from(["float32", "float64"]),
       order=st.sampled_from("CF"), least=st.sampled_from([0, special.RELU_GRAD_MIN]))
def test_relus_derivative_in_one_pass_equals_numpys_bitwise(shape, dtype, order, least):
    with mock.patch.object(special, "RELU_GRAD_MIN", least):  # 0: the kernel for every size drawn
        _relus_derivative_equals_numpys(shape, dtype, order, least == 0)


def _relus_derivative_equals_numpys(shape, dtype, order, kernel):
    rng = np.random.default_rng(len(shape))
    g = np.asarray(rng.normal(size=shape), dtype, order=order)
    y = np.maximum(np.asarray(rng.normal(size=shape), dtype, order=order), 0)
    g.flat[0], y.flat[-1] = -1.5, np.nan  # -0.0 where the mask is off; NaN never passes
    if g.size > 2:
        g.flat[1], y.flat[1] = np.nan, 0.0
    want = np.multiply(g, y > 0)
    got = special.relu_grad(g, y)
    np.testing.assert_array_equal(got.view(f"u{g.itemsize}"), want.view(f"u{g.itemsize}"))
    bound = special.relu_grad_for(g.shape, dtype)  # a compiled step's, for these specs
    for a, b in [(g, y), (np.asfortranarray(g), y), (g, np.asfortranarray(y))]:
        np.testing.assert_array_equal(bound(a, b).view(f"u{g.itemsize}"), want.view(f"u{g.itemsize}"))
    out = np.empty_like(g)
    assert special.relu_grad(g, y, out=out) is out
    np.testing.assert_array_equal(out.view(f"u{g.itemsize}"), want.view(f"u{g.itemsize}"))
    other = np.empty(g.shape, dtype, order="F" if order == "C" else "C")  # an out laid out otherwise: numpy's form
    np.testing.assert_array_equal(special.relu_grad(g, y, out=other).view(f"u{g.itemsize}"), want.view(f"u{g.itemsize}"))
    flipped = np.array(g, order="F" if order == "C" else "C")  # g laid out otherwise than y: copied in y's layout
    got = special.relu_grad(flipped, y)
    np.testing.assert_array_equal(got.view(f"u{g.itemsize}"), want.view(f"u{g.itemsize}"))
    assert got.flags[f"{order}_CONTIGUOUS"] or not kernel
    np.testing.assert_array_equal(flipped, g)  # the copy, not g, written
    row = y[..., :1]  # broadcast
    np.testing.assert_array_equal(special.relu_grad(g, row).view(f"u{g.itemsize}"),
                                  np.multiply(g, row > 0).view(f"u{g.itemsize}"))


@pytest.mark.parametrize("copies", [1, 1000])  # 9 elements (numpy's form, with the kernel's threshold at 0) and 9,000
def test_relus_derivative_reads_nan_and_infinity_as_numpy_does(copies, monkeypatch):
    if copies == 1:
        monkeypatch.setattr(special, "RELU_GRAD_MIN", 0)
    y = np.tile(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 2.0], np.float32), copies)
    g = np.tile(np.array([1.0, 2.0, 3.0, np.inf, -np.inf, -1.0, np.nan, 4.0, -5.0], np.float32), copies)
    with np.errstate(invalid="ignore"):
        want = np.multiply(g, y > 0)
    if copies == 1:
        with np.errstate(all="raise"):  # no flag the product itself would not raise numpy's
            got = special.relu_grad(g[:3], y[:3])
        np.testing.assert_array_equal(got.view(np.uint32), want[:3].view(np.uint32))
    with np.errstate(invalid="ignore"):
        got = special.relu_grad(g, y)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    g64, y64 = g.astype(np.float64), y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(special.relu_grad(g64, y64).view(np.uint64),
                                      np.multiply(g64, y64 > 0).view(np.uint64))


@pytest.mark.parametrize("code", [epilogue.CLIP, epilogue.HARD_SWISH, epilogue.GELU])
@pytest.mark.parametrize("shape, axis", [((37, 24), 1), ((5, 6, 40), 1)])  # a product's rows, a convolution's planes
def test_an_epilogue_split_into_jobs_on_the_team_gives_the_bits_of_one_pass(code, shape, axis, monkeypatch):
    if not kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(code)
    dtype = np.float32 if code == epilogue.GELU else np.float64
    value = (rng.normal(size=shape) * 3).astype(dtype)
    value.flat[:3] = [np.nan, -0.0, np.inf]
    bias = rng.normal(size=shape[axis]).astype(dtype)
    monkeypatch.setattr(epilogue, "MIN_JOB_ELEMENTS", {})
    monkeypatch.setattr(epilogue, "MIN_CHEAP_JOB_ELEMENTS", 10**9)
    one = epilogue.bias_activation(value.copy(), bias, axis, code, 1 / 6, 0.5)
    monkeypatch.setattr(epilogue, "MIN_CHEAP_JOB_ELEMENTS", 8)
    split = epilogue.bias_activation(value.copy(), bias, axis, code, 1 / 6, 0.5)
    np.testing.assert_array_equal(split.view(f"u{value.itemsize}"), one.view(f"u{value.itemsize}"))
    apply = epilogue.bound(shape, dtype, axis, code, 1 / 6, 0.5)
    np.testing.assert_array_equal(apply(value.copy(), bias).view(f"u{value.itemsize}"), one.view(f"u{value.itemsize}"))


@pytest.mark.parametrize("code", [epilogue.NONE, epilogue.CLIP, epilogue.HARD_SWISH, epilogue.GELU])
def test_an_epilogue_bound_to_a_shape_gives_the_bits_of_the_general_one(form, code):
    rng = np.random.default_rng(8)
    bias = rng.normal(size=9).astype(np.float32)
    apply = epilogue.bound((6, 9), np.float32, 1, code, 1 / 6, 0.5)
    for out in (rng.normal(size=(6, 9)).astype(np.float32), np.asfortranarray(rng.normal(size=(6, 9)), np.float32),
                rng.normal(size=(4, 9)).astype(np.float32)):  # row-major, column-major, another shape
        out.flat[:2] = [-0.0, np.nan]
        want = epilogue.bias_activation(out.copy(), bias, 1, code, 1 / 6, 0.5)
        got = apply(out, bias)
        assert got is out
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    untouched = np.full((6, 9), -0.0, np.float32)
    if code == epilogue.NONE:  # no bias, no activation: nothing to do (-0.0 + 0.0 would be +0.0)
        assert np.signbit(epilogue.bound((6, 9), np.float32, 1, code, 0.0, 0.0)(untouched, None)).all()


_EVERY_KERNEL_FAMILY = """
import numpy as np
from vertexflow.kernels import epilogue, norm, products, special

x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
norm.MIN_JOB_ELEMENTS = epilogue.MIN_CHEAP_JOB_ELEMENTS = special.RELU_GRAD_MIN = 32  # split: jobs and callers
norm.softmax_last(x)
for dtype in (np.float32, np.float64):
    norm.layer_norm_last(x.astype(dtype), np.ones(32, dtype), np.zeros(32, dtype), 1e-5)
    norm.mean_last(x.astype(dtype))
    special.relu_grad(x.astype(dtype), x.astype(dtype))
special.erf32(x), special.gelu32(x), special.gelu_grad32(x, x)
for code in (epilogue.NONE, epilogue.CLIP, epilogue.HARD_SIGMOID, epilogue.HARD_SWISH, epilogue.GELU):
    epilogue.bias_activation(x.copy(), np.ones(32, np.float32), 1, code, 0.5, 1.0)
    epilogue.bias_activation(x.reshape(8, 8, 32).copy(), np.ones(8, np.float32), 1, code, 0.5, 1.0)
    products.MIN_PART_PRODUCTS = 1  # split too: its jobs and their caller
    for dtype in (np.float32, np.float64):
        products.times_transposed(x[:8].astype(dtype), x.astype(dtype), None, np.ones(64, dtype), code, 0.5, 1.0)
"""


@pytest.mark.skipif(not kernels.available(), reason="numba kernels only")
def test_kernels_compiled_in_one_process_are_loaded_from_disk_in_the_next(tmp_path):
    # A kernel defined as a closure over another compiled function got a new cache entry (and was
    # compiled again) in every process: the disk cache grew by hundreds of files a day.
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), VERTEXFLOW_CACHE_DIR=str(tmp_path / "generated"))

    def entries():
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.nbc"))

    found = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _EVERY_KERNEL_FAMILY], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        found.append(entries())
    assert found[0] and found[1] == found[0]


@pytest.mark.skipif(not kernels.available() or not im2col.gemm_address(np.float32), reason="numba and numpy's ILP64 OpenBLAS")
@settings(max_examples=30, deadline=None)
@given(images=st.integers(2, 5), channels=st.integers(1, 6), size=st.integers(3, 12), outs=st.integers(2, 8),
       k=st.integers(1, 3), stride=st.integers(1, 2), padding=st.integers(0, 1), groups=st.sampled_from([1, 2]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_a_run_of_images_in_one_call_gives_numpys_products_bits(images, channels, size, outs, k, stride, padding,
                                                                 groups, dtype, seed):
    # CBLAS's gemm called from the compiled image loop is the routine numpy's matmul calls: the same bits.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((images, channels * groups, size, size)).astype(dtype)
    w = rng.standard_normal((outs * groups, channels, k, k)).astype(dtype)
    args = ((stride, stride), (padding, padding), (1, 1), groups)
    got = im2col.conv2d(x, w, *args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(im2col, "gemm_address", lambda dtype: 0)  # numpy's product image by image
        expected = im2col.conv2d(x, w, *args)
    np.testing.assert_array_equal(got, expected)
