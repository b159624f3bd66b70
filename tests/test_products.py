"""A few rows times a transposed matrix (`kernels/products.py`): values against numpy's float64
product, the same bits however the columns split, the epilogue's bits, and where a graph uses it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow import machine
from vertexflow.kernels import available, epilogue, products, team
from vertexflow.ops.linalg import Matmul

pytestmark = pytest.mark.skipif(not available(), reason="numba kernels only")

@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """The kernel for products of any size (it leaves the smallest to numpy), so small shapes test it."""
    monkeypatch.setattr(products, "MIN_PRODUCTS", 0)


CODES = {epilogue.NONE: (0.0, 0.0), epilogue.CLIP: (0.0, 6.0), epilogue.HARD_SIGMOID: (0.2, 0.5),
         epilogue.HARD_SWISH: (1 / 6, 0.5), epilogue.GELU: (0.0, 0.0)}


def _operands(rows, depth, columns, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, depth)).astype(dtype), rng.standard_normal((columns, depth)).astype(dtype),
            rng.standard_normal(columns).astype(dtype))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(products.MIN_ROWS, products.MAX_ROWS), depth=st.integers(1, 300), columns=st.integers(1, 70),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_a_few_rows_times_a_transposed_matrix_equal_numpys_product(rows, depth, columns, dtype, seed):
    x, w, _ = _operands(rows, depth, columns, dtype, seed)
    assert products.takes(x, w)
    got = Matmul().forward(np, x, w.T)  # an exported Linear: the weight stored (out, in), used transposed
    assert got.dtype == dtype and got.flags.c_contiguous
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w.T).astype(np.float64)  # the sum's size bounds its rounding
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(got - want) <= 2 * depth * eps * scale + np.finfo(dtype).tiny)
    out = np.empty((rows, columns), dtype)
    assert Matmul().forward(np, x, w.T, out=out) is out
    np.testing.assert_array_equal(out, got)


@pytest.mark.skipif(not team.enabled(), reason="no team here: one core or numba missing")
@settings(max_examples=30, deadline=None)
@given(rows=st.integers(products.MIN_ROWS, products.MAX_ROWS), depth=st.integers(1, 1200),
       columns=st.integers(1, 70), code=st.sampled_from(sorted(CODES)), biased=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
@example(rows=8, depth=512, columns=70, code=epilogue.CLIP, biased=True, dtype=np.float32, seed=1)  # 2 rows a page
@example(rows=7, depth=1024, columns=70, code=epilogue.NONE, biased=True, dtype=np.float32, seed=2)  # 1 row a page
def test_a_split_product_gives_the_bits_of_one_part_and_of_its_epilogue_after(rows, depth, columns, code, biased,
                                                                               dtype, seed):
    if code == epilogue.GELU and dtype == np.float64:
        code = epilogue.CLIP  # the rewrite leaves float64's GELU to its own op
    x, w, bias = _operands(rows, depth, columns, dtype, seed)
    bias = bias if biased else None
    p0, p1 = CODES[code]
    whole = products.times_transposed(x, w, None, bias, code, p0, p1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(products, "MIN_PART_PRODUCTS", 1)  # a part for every block of four columns, up to the cores
        before = team.team().statistics()["worker_products"]
        with machine.blas_threads(machine.cores()):
            split = products.times_transposed(x, w, None, bias, code, p0, p1)
        jobs = [b - a for a, b in zip(before, team.team().statistics()["worker_products"])]
    np.testing.assert_array_equal(split, whole)
    groups = columns // products.group(depth, dtype)  # rows of W a page apart, in groups of blocks
    assert sum(jobs) == (min(groups, machine.cores()) - 1 if groups > 1 else 0)  # the other parts, on the workers
    after = epilogue.bias_activation(products.times_transposed(x, w), bias, 1, code, p0, p1)
    np.testing.assert_array_equal(whole, after)


@pytest.mark.parametrize("rows", [2, 9])
def test_other_shapes_and_layouts_are_left_to_numpy(rows):
    x, w, _ = _operands(rows, 16, 12, np.float32, 0)
    assert not products.takes(x, w)  # too few or too many rows
    x, w, _ = _operands(8, 16, 12, np.float32, 0)
    assert products.takes(x, w)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(products, "MIN_PRODUCTS", 8 * 16 * 12 + 1)
        assert not products.takes(x, w)  # too small to pay
    assert not products.takes(x.T.copy().T, w)  # column-major rows
    assert not products.takes(x, w, np.empty((12, 8), np.float32).T)  # a column-major out
    assert not products.takes(x, w.astype(np.float64))  # mixed dtypes
    assert not products.takes(x.astype(np.float16), w.astype(np.float16))


@pytest.mark.parametrize("activation", ["relu", "gelu", "hard_swish", "sigmoid", None])
def test_an_exported_linear_at_a_small_batch_gives_the_bits_of_its_vertices(activation):
    """x @ W.T + b, then the activation: the epilogue rewrite runs it in the product's kernel, with the
    bits of the graph run vertex by vertex (whose product is the same kernel's)."""
    rng = np.random.default_rng(3)
    g = vf.Graph()
    x = g.input("x", shape=(None, 40), dtype="float32")
    w = g.param("w", value=rng.standard_normal((30, 40)).astype(np.float32))
    b = g.param("b", value=rng.standard_normal(30).astype(np.float32))
    h = x @ vf.transpose(w) + b
    y = h if activation is None else getattr(vf, activation)(h)
    feed = rng.standard_normal((8, 40)).astype(np.float32)
    want = vf.SequentialExecutor(g, optimize=False).run({x: feed}, y)
    calls = []
    kernel = products.times_transposed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(products, "times_transposed", lambda *args: calls.append(len(args)) or kernel(*args))
        tape = vf.SequentialExecutor(g)
        for _ in range(3):
            np.testing.assert_array_equal(tape.run({x: feed}, y), want)
        with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as actors:
            np.testing.assert_array_equal(actors.run({x: feed}, y), want)
    assert calls and set(calls) == {7}  # the epilogue's arguments passed to the kernel (sigmoid's: the bias)
    reference = feed.astype(np.float64) @ w.value.T.astype(np.float64) + b.value
    if activation in (None, "relu"):
        np.testing.assert_allclose(want, reference if activation is None else np.maximum(reference, 0), rtol=1e-4,
                                   atol=1e-4)


def test_nan_and_infinity_reach_the_outputs_they_touch():
    x, w, _ = _operands(8, 64, 20, np.float32, 1)
    x[2, 5], w[7, 3], x[5, 9] = np.nan, np.inf, 1e30
    got = products.times_transposed(x, w)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[2]).all()  # NaN's row
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])  # infinity's column, signed
    assert np.isinf(got[np.arange(8) != 2, 7]).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite].astype(np.float32), rtol=1e-4, atol=1e-2)
