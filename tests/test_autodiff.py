"""Symbolic vf.grad and runtime backward: higher order, user ops, pruning, errors."""

import numpy as np
import pytest

import vertexflow as vf

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


class Cube(vf.ops.Op):
    """A user-defined op: x ** 3, with its derivative rule written against F."""

    name = "cube"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x * x * x

    def vjp(self, F, g, xs, y):
        (x,) = xs
        return (F.mul(g, F.mul(F.mul(x, x), 3.0)),)

    def cost(self, x):
        return 2.0 * vf.ops.numel(x)


def test_user_op_works_in_grad_backward_and_check_grad():
    g = vf.Graph()
    x = g.input("x", shape=(None, 3), dtype="float64")
    w = g.param("w", value=np.array([0.5, -1.0, 2.0]))
    y = vf.sum(Cube()(x * w, name="cubed"))
    feeds = {x: np.arange(6.0).reshape(2, 3)}
    (dw,) = vf.grad(y, [w])
    ex = vf.SequentialExecutor(g)
    _, grads = ex.backward(feeds, y)
    np.testing.assert_array_equal(ex.run(feeds, dw), grads[w])
    np.testing.assert_allclose(grads[w], (3 * (feeds[x] * w.value) ** 2 * feeds[x]).sum(0))
    vf.check_grad(y, [w, x], feeds)
    assert "cubed" in ex.program(y)


def test_user_op_without_derivative_rule_says_so():
    class Floor(vf.ops.Op):
        name = "floor"

        def infer(self, x):
            return x

        def forward(self, xp, x):
            return xp.floor(x)

    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.sum(Floor()(x))
    with pytest.raises(vf.GraphError, match="op 'floor' has no derivative rule"):
        vf.grad(y, x)
    with pytest.raises(vf.GraphError, match="op 'floor' has no derivative rule"):
        vf.SequentialExecutor(g).backward({x: np.ones(3, "float32")}, y, [x])


def test_user_op_with_wrong_gradient_shape_is_caught():
    class Bad(vf.ops.Op):
        name = "bad"

        def infer(self, x):
            return x

        def forward(self, xp, x):
            return x

        def vjp(self, F, g, xs, y):
            return (F.sum(g),)

    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.sum(Bad()(x, name="oops"))
    with pytest.raises(vf.ShapeError, match=r"derivative rule of bad 'oops' gave a gradient of shape \(\) for input 0"):
        vf.SequentialExecutor(g).backward({x: np.ones(3, "float32")}, y, [x])


def test_gradient_names_and_marks():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    w = g.param("w", value=np.ones(3, "float32"))
    loss = vf.sum(x * w, name="loss")
    dw = vf.grad(loss, w)
    assert dw.name == "dloss/dw" and dw.role == "grad"
    assert vf.grad(loss, "w").name == "dloss/dw_2"


def test_unused_gradient_vertices_are_pruned():
    g = vf.Graph()
    x = g.input("x", shape=(3, 4), dtype="float64")
    w = g.param("w", value=np.ones((4, 2)))
    loss = vf.sum(vf.tanh(x @ w))
    vf.grad(loss, [w])
    for node in g:
        if node.role == "grad":
            assert node.name == "dsum_1/dw" or g.consumers(node), node


def test_gradient_of_unrelated_vertex_is_refused_unless_allowed_then_zero():
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    w = g.param("w", value=np.ones(3))
    unrelated = g.param("u", value=np.ones((2, 2)))
    loss = vf.sum(x * w)
    before = len(g)
    with pytest.raises(vf.GraphError, match=r"'sum_1' does not depend on 'u'.*pass allow_unused=True"):
        vf.grad(loss, [w, unrelated])
    assert len(g) == before  # nothing was built
    du = vf.grad(loss, unrelated, allow_unused=True)
    ex = vf.SequentialExecutor(g)
    np.testing.assert_array_equal(ex.run({x: np.ones(3)}, du), np.zeros((2, 2)))
    _, grads = ex.backward({x: np.ones(3)}, loss, [unrelated])
    np.testing.assert_array_equal(grads[unrelated], np.zeros((2, 2)))


def test_only_scalars_are_differentiated():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    with pytest.raises(vf.ShapeError, match=r"can only differentiate a scalar.*\(3,\).*vf.sum or vf.mean"):
        vf.grad(x * 2, x)


def test_backward_defaults_to_every_param_and_sums_fan_out_in_consumer_order():
    g = vf.Graph()
    x = g.input("x", shape=(2, 3), dtype="float64")
    w = g.param("w", value=np.full(3, 0.5))
    h = x * w
    loss = vf.sum(h * h + vf.exp(h) + h)  # w reaches the loss by three consumers of h
    feeds = {x: np.arange(6.0).reshape(2, 3)}
    value, grads = vf.SequentialExecutor(g).backward(feeds, loss)
    assert list(grads) == [w]
    hv = feeds[x] * 0.5
    np.testing.assert_allclose(grads[w], ((2 * hv + np.exp(hv) + 1) * feeds[x]).sum(0))
    np.testing.assert_array_equal(vf.SequentialExecutor(g).run(feeds, vf.grad(loss, w)), grads[w])


def _hvp_graph(op_name):
    g = vf.Graph()
    x = g.input("x", shape=(3, 4), dtype="float64")
    w = g.param("w", value=np.random.default_rng(0).normal(size=(4, 2)))
    v = g.const(np.random.default_rng(1).normal(size=(4, 2)), name="v")
    if op_name == "matmul":
        y = vf.sum(vf.tanh(x @ w) ** 2)
    elif op_name == "elementwise":
        y = vf.sum(vf.sigmoid(w) * vf.exp(w * 0.3) / (1.0 + w * w) + vf.log(vf.abs(w) + 1.0))
    else:
        y = vf.sum(vf.maximum(w, 0.1) * vf.sqrt(w * w + 1.0) - vf.relu(w) ** 3)
    (dw,) = vf.grad(y, [w])
    hv = vf.grad(vf.sum(dw * v), [w])[0]  # Hessian-vector product
    feeds = {x: np.random.default_rng(2).normal(size=(3, 4))}
    return g, x, w, v, y, hv, feeds


@pytest.mark.parametrize("kind", ["matmul", "elementwise", "kinks"])
def test_gradient_of_gradient_matches_finite_differences(kind):
    g, x, w, v, y, hv, feeds = _hvp_graph(kind)
    (dw,) = [n for n in g if n.name == f"d{y.name}/dw"]
    ex = vf.SequentialExecutor(g)
    got = ex.run(feeds, hv)
    eps = 1e-6
    base = w.value.copy()
    w.value = base + eps * v.value
    up = ex.run(feeds, dw)
    w.value = base - eps * v.value
    down = ex.run(feeds, dw)
    w.value = base
    np.testing.assert_allclose(got, (up - down) / (2 * eps), rtol=1e-6, atol=1e-8)


@needs_torch
@pytest.mark.parametrize("kind", ["matmul", "elementwise"])
def test_gradient_of_gradient_matches_torch(kind):
    g, x, w, v, y, hv, feeds = _hvp_graph(kind)
    got = vf.SequentialExecutor(g).run(feeds, hv)
    tw = torch.tensor(w.value, requires_grad=True)
    tx = torch.tensor(feeds[x])
    if kind == "matmul":
        ty = (torch.tanh(tx @ tw) ** 2).sum()
    else:
        ty = (torch.sigmoid(tw) * torch.exp(tw * 0.3) / (1.0 + tw * tw) + torch.log(tw.abs() + 1.0)).sum()
    (gw,) = torch.autograd.grad(ty, tw, create_graph=True)
    (thv,) = torch.autograd.grad((gw * torch.tensor(v.value)).sum(), tw)
    np.testing.assert_allclose(got, thv.numpy(), rtol=1e-10, atol=1e-12)


def test_grad_with_batch_dimension_unknown_until_run():
    g = vf.Graph()
    x = g.input("x", shape=(None, 4), dtype="float64")
    b = g.param("b", value=np.zeros(4))
    loss = vf.mean(vf.sum((x + b) ** 2, axis=1))
    db = vf.grad(loss, b)
    ex = vf.SequentialExecutor(g)
    for n in (1, 5):
        xv = np.arange(4.0 * n).reshape(n, 4)
        np.testing.assert_allclose(ex.run({x: xv}, db), 2 * xv.mean(0))


def test_check_grad_picks_its_tolerances_from_the_dtype():
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        g = vf.Graph()
        x = g.input("x", shape=(3, 4), dtype=dtype)
        w = g.param("w", value=rng.normal(size=(4, 2)).astype(dtype))
        loss = vf.mean(vf.tanh(x @ w) ** 2)
        checked = vf.check_grad(loss, [w, x], {x: rng.normal(size=(3, 4)).astype(dtype)})
        assert set(checked) == {w, x}
    g = vf.Graph()
    h = g.input("h", shape=(3,), dtype="float16")
    with pytest.raises(TypeError, match="need float64 or float32 vertices, not float16"):
        vf.check_grad(vf.sum(h * h), [h], {h: np.ones(3, "float16")})
