"""The selection, indexing, math and sampling ops: values and gradients against torch (where it is
installed) and central finite differences, on shapes hypothesis draws."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexflow as vf

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install -e '.[test]')")


def _run(node, feeds, wrt, seed_like=None):
    """Value of `node` and gradients of sum(node * r) (r fixed random) with respect to `wrt`."""
    g = node.graph
    rng = np.random.default_rng(1)
    r = rng.normal(size=node.shape)
    loss = vf.sum(node * r)
    value, grads = vf.SequentialExecutor(g).backward(feeds, loss, wrt, fetch=[node])[::2], \
        vf.SequentialExecutor(g).backward(feeds, loss, wrt)[1]
    return value[1][0], [grads[w] for w in wrt], r


def _torch_grads(fn, arrays, r):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    (out * torch.tensor(r)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else np.zeros_like(a)
                                  for t, a in zip(tensors, arrays)]


shapes = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4))


@needs_torch
@given(shape=shapes, seed=st.integers(0, 999),
       name=st.sampled_from(["sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh",
                             "arccosh", "arctanh"]))
def test_math_functions_and_their_derivatives_match_torch(shape, seed, name):
    rng = np.random.default_rng(seed)
    value = rng.uniform(-0.9, 0.9, size=shape)
    if name == "arccosh":
        value = 1.5 + np.abs(value)
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    got, (grad,), r = _run(getattr(vf, name)(x), {x: value}, [x])
    torch_name = {"arcsin": "asin", "arccos": "acos", "arctan": "atan", "arcsinh": "asinh", "arccosh": "acosh",
                  "arctanh": "atanh"}.get(name, name)
    want, (want_grad,) = _torch_grads(getattr(torch, torch_name), [value], r)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10)


@needs_torch
@given(shape=shapes, seed=st.integers(0, 999), axis=st.integers(-3, 2), exclusive=st.booleans(),
       reverse=st.booleans(), zeros=st.integers(0, 3))
def test_running_sums_and_products_match_torch_even_through_zeros(shape, seed, axis, exclusive, reverse, zeros):
    rng = np.random.default_rng(seed)
    value = rng.normal(size=shape)
    value.reshape(-1)[rng.integers(0, value.size, size=zeros)] = 0.0  # the product's derivative must not divide
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    for fn, torch_fn in ((vf.cumsum, torch.cumsum), (vf.cumprod, torch.cumprod)):
        got, (grad,), r = _run(fn(x, axis, exclusive, reverse), {x: value}, [x])

        def reference(t, torch_fn=torch_fn, fn=fn):
            if reverse:
                t = torch.flip(t, [axis])
            if exclusive:  # shifted by one: the identity first
                fill = torch.zeros_like if fn is vf.cumsum else torch.ones_like
                head = fill(t.narrow(axis, 0, 1))
                t = torch.cat([head, t.narrow(axis, 0, t.shape[axis] - 1)], dim=axis)
            out = torch_fn(t, dim=axis)
            return torch.flip(out, [axis]) if reverse else out

        want, (want_grad,) = _torch_grads(reference, [value], r)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


@needs_torch
@given(shape=shapes, seed=st.integers(0, 999), axis=st.integers(0, 2), zeros=st.integers(0, 2))
def test_products_over_an_axis_match_torch_with_zeros(shape, seed, axis, zeros):
    rng = np.random.default_rng(seed)
    value = rng.normal(size=shape)
    value.reshape(-1)[rng.integers(0, value.size, size=zeros)] = 0.0
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    got, (grad,), r = _run(vf.prod(x, axis), {x: value}, [x])
    want, (want_grad,) = _torch_grads(lambda t: torch.prod(t, dim=axis), [value], r)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


@needs_torch
@given(shape=shapes, seed=st.integers(0, 999), axis=st.integers(0, 2), data=st.data())
def test_gathers_scatters_and_top_k_match_torch_with_gradients(shape, seed, axis, data):
    rng = np.random.default_rng(seed)
    value = rng.normal(size=shape)
    index_shape = list(shape)
    index_shape[axis] = data.draw(st.integers(1, 4))
    index = rng.integers(0, shape[axis], size=index_shape)
    updates = rng.normal(size=index_shape)
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    u = g.input("u", tuple(index_shape), "float64")
    feeds = {x: value, u: updates}
    got, (grad,), r = _run(vf.gather_elements(x, index, axis), feeds, [x])
    want, (want_grad,) = _torch_grads(lambda t: torch.gather(t, axis, torch.tensor(index)), [value], r)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12)
    got, grads, r = _run(vf.scatter_elements(x, index, u, axis, "add"), feeds, [x, u])
    want, want_grads = _torch_grads(lambda t, v: t.scatter_add(axis, torch.tensor(index), v), [value, updates], r)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    k = data.draw(st.integers(1, shape[axis]))
    got, (grad,), r = _run(vf.topk(x, k, axis)[0], feeds, [x])
    want, (want_grad,) = _torch_grads(lambda t: torch.topk(t, k, dim=axis).values, [value], r)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12)
    got = vf.SequentialExecutor(g).run(feeds, vf.argmax(x, axis, keepdims=False))
    np.testing.assert_array_equal(got, torch.argmax(torch.tensor(value), dim=axis).numpy())


@needs_torch
@settings(max_examples=30)
@given(seed=st.integers(0, 999), equation=st.sampled_from(
    ["ij,jk->ik", "bij,bjk->bik", "ij->j", "i,i->", "bhqd,bhkd->bhqk", "ij,kj->ik", "...ij,...jk->...ik", "ii->i", "iij,jk->ik"]))
def test_einsum_and_its_gradients_match_torch(seed, equation):
    rng = np.random.default_rng(seed)
    shapes = {"ij,jk->ik": [(3, 4), (4, 5)], "bij,bjk->bik": [(2, 3, 4), (2, 4, 5)], "ij->j": [(3, 4)],
              "i,i->": [(5,), (5,)], "bhqd,bhkd->bhqk": [(2, 2, 3, 4), (2, 2, 5, 4)], "ij,kj->ik": [(3, 4), (5, 4)],
              "...ij,...jk->...ik": [(2, 3, 4), (4, 5)], "ii->i": [(3, 3)],
              "iij,jk->ik": [(3, 3, 4), (4, 2)]}[equation]
    arrays = [rng.normal(size=s) for s in shapes]
    g = vf.Graph()
    xs = [g.input(f"x{k}", s, "float64") for k, s in enumerate(shapes)]
    node = vf.einsum(equation, *xs)
    want = torch.einsum(equation, *map(torch.tensor, arrays)).numpy()
    np.testing.assert_allclose(vf.SequentialExecutor(g).run(dict(zip(xs, arrays)), node), want, rtol=1e-12)
    got, grads, r = _run(node, dict(zip(xs, arrays)), xs)
    _, want_grads = _torch_grads(lambda *t: torch.einsum(equation, *t), arrays, r)
    for a, b in zip(grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@needs_torch
@given(seed=st.integers(0, 999), n=st.integers(1, 4))
def test_determinants_and_their_gradients_match_torch(seed, n):
    value = np.random.default_rng(seed).normal(size=(2, n, n)) + 2 * np.eye(n)
    g = vf.Graph()
    x = g.input("x", (2, n, n), "float64")
    got, (grad,), r = _run(vf.det(x), {x: value}, [x])
    want, (want_grad,) = _torch_grads(torch.linalg.det, [value], r)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-10)


@needs_torch
@settings(max_examples=40)
@given(seed=st.integers(0, 999), mode=st.sampled_from(["nearest", "linear", "cubic"]),
       padding=st.sampled_from(["zeros", "border", "reflection"]), align=st.booleans(), volume=st.booleans())
def test_grid_sample_matches_torch_with_gradients_for_the_image_and_the_grid(seed, mode, padding, align, volume):
    if volume and mode == "cubic":
        return  # torch has no bicubic volumes
    rng = np.random.default_rng(seed)
    spatial = (3, 4, 5) if volume else (4, 5)
    out = (2, 3, 2) if volume else (3, 4)
    image = rng.normal(size=(2, 3) + spatial)
    grid = rng.uniform(-1.3, 1.3, size=(2,) + out + (len(spatial),))
    g = vf.Graph()
    x = g.input("x", image.shape, "float64")
    p = g.input("p", grid.shape, "float64")
    node = vf.ops.grid_sample(x, p, mode, padding, align)
    if mode == "cubic" and padding != "zeros":
        # ONNX moves an outside point in before padding its taps, torch pads each tap only: ONNX's
        # node cases check these values; their derivatives are checked here by finite differences
        vf.check_grad(vf.sum(node * node), [x, p], {x: image, p: grid})
        return
    got, grads, r = _run(node, {x: image, p: grid}, [x, p])
    torch_mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    want, want_grads = _torch_grads(lambda a, b: torch.nn.functional.grid_sample(
        a, b, mode=torch_mode, padding_mode=padding, align_corners=align), [image, grid], r)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-9, atol=1e-11)
    if mode != "nearest":  # a nearest sample's grid gradient is zero in both
        np.testing.assert_allclose(grads[1], want_grads[1], rtol=1e-7, atol=1e-9)


@needs_torch
@given(seed=st.integers(0, 999), align=st.booleans(), volume=st.booleans())
def test_affine_grid_matches_torch(seed, align, volume):
    dims = 3 if volume else 2
    theta = np.random.default_rng(seed).normal(size=(2, dims, dims + 1))
    size = (2, 3, 4, 5, 6) if volume else (2, 3, 4, 5)
    g = vf.Graph()
    t = g.input("t", theta.shape, "float64")
    got, (grad,), r = _run(vf.ops.affine_grid(t, size, align), {t: theta}, [t])
    want, (want_grad,) = _torch_grads(lambda a: torch.nn.functional.affine_grid(a, size, align_corners=align),
                                      [theta], r)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-12)


@given(shape=shapes, seed=st.integers(0, 999))
def test_gather_and_scatter_by_index_tuples_pass_finite_differences(shape, seed):
    rng = np.random.default_rng(seed)
    value = rng.normal(size=shape)
    index = np.stack([rng.integers(0, shape[0], size=3), rng.integers(0, shape[1], size=3)], axis=1)
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    u = g.input("u", (3, shape[2]), "float64")
    feeds = {x: value, u: rng.normal(size=(3, shape[2]))}
    np.testing.assert_array_equal(vf.SequentialExecutor(g).run(feeds, vf.gather_nd(x, index)),
                                  value[index[:, 0], index[:, 1]])
    vf.check_grad(vf.sum(vf.gather_nd(x, index) ** 2), [x], feeds)
    vf.check_grad(vf.sum(vf.scatter_nd(x, index, u, "add") ** 2), [x, u], feeds)


def _torch_fourier(packed, axis, length, mode):
    """torch.fft's transform of a packed (..., 1 or 2) tensor, packed the same way."""
    z = packed[..., 0] if packed.shape[-1] == 1 else torch.complex(packed[..., 0], packed[..., 1])
    if mode == "irfft":
        bins = length // 2 + 1
        if z.shape[axis] < bins:  # as numpy, a short half spectrum is zero-padded (torch would refuse n)
            pad = list(z.shape)
            pad[axis] = bins - z.shape[axis]
            z = torch.cat([z, torch.zeros(pad, dtype=z.dtype)], dim=axis)
        return torch.fft.irfft(z, n=length, dim=axis)[..., None]
    out = {"fft": torch.fft.fft, "onesided": torch.fft.fft, "ifft": torch.fft.ifft}[mode](z, n=length, dim=axis)
    if mode == "onesided":
        out = out.narrow(axis, 0, length // 2 + 1)
    return torch.stack([out.real, out.imag], dim=-1)


@needs_torch
@given(batch=st.integers(1, 3), n=st.integers(1, 7), extra=st.integers(-2, 3), parts=st.sampled_from([1, 2]),
       axis=st.sampled_from([0, 1]), mode=st.sampled_from(["fft", "onesided", "ifft", "irfft"]),
       seed=st.integers(0, 999))
def test_fourier_and_its_gradient_match_torch_fft(batch, n, extra, parts, axis, mode, seed):
    """Every mode (zero-padded or truncated to `length`, real or complex input) against torch.fft, and the
    gradient of a random projection of it, which is the transform's adjoint."""
    length = max(1, (2 * (n - 1) if mode == "irfft" else n) + extra)
    shape = (batch, n, parts) if axis == 1 else (n, batch, parts)
    value = np.random.default_rng(seed).normal(size=shape)
    g = vf.Graph()
    x = g.input("x", shape, "float64")
    op = vf.fourier(x, axis, length, inverse=mode in ("ifft", "irfft"), onesided=mode in ("onesided", "irfft"))
    got, (grad,), r = _run(op, {x: value}, [x])
    want, (want_grad,) = _torch_grads(lambda a: _torch_fourier(a, axis, length, mode), [value], r)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_the_fourier_adjoints_derivative_is_the_transform_again():
    """Second derivatives: the gradient of a function of the gradient passes finite differences."""
    g = vf.Graph()
    x = g.input("x", (2, 5, 2), "float64")
    feeds = {x: np.random.default_rng(3).normal(size=(2, 5, 2))}
    for inverse, onesided in [(False, False), (False, True), (True, False), (True, True)]:
        y = vf.fourier(x, 1, 8, inverse, onesided)
        (gx,) = vf.grad(vf.sum(y * y), [x])
        vf.check_grad(vf.sum(gx * gx), [x], feeds)
