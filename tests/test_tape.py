"""The compiled tape: the same bits as the tape run one vertex at a time, and every failure still named.

Every call after the first for a set of fed shapes runs generated code
(`tape.Program`); the first, and every traced or checked call, runs the same
instructions through the execution core. These tests hold the two to each other.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexflow as vf

from .actors.test_actor_executor import random_graph


@settings(max_examples=40, deadline=None)
@given(case=random_graph(), optimize=st.booleans(), fuse=st.booleans())
def test_compiled_calls_give_the_bits_of_the_first_checked_call(case, optimize, fuse):
    g, outputs, loss, params, feeds = case
    tape = vf.SequentialExecutor(g, optimize=optimize, fuse=fuse)
    checked = tape.run(feeds, outputs)  # the first call for these shapes: one vertex at a time
    (value, grads) = tape.backward(feeds, loss)
    for _ in range(2):  # compiled
        for want, got in zip(checked, tape.run(feeds, outputs)):
            np.testing.assert_array_equal(got, want)
        again, grads_again = tape.backward(feeds, loss)
        np.testing.assert_array_equal(again, value)
        for p in grads:
            np.testing.assert_array_equal(grads_again[p], grads[p])
    with vf.trace():  # traced: one vertex at a time again
        for want, got in zip(checked, tape.run(feeds, outputs)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_in_place_writes_never_touch_an_array_a_live_view_shows(executor):
    """x * x may write into tanh(x)'s array only where no value that may be a view of it (a transpose)
    is read later, fetched, or kept for the reverse sweep: each of the three read wrong values from
    the second call on (the first runs one vertex at a time), and the gradient of w @ t.T was x * x's."""
    rng = np.random.default_rng(1)
    g = vf.Graph()
    a = g.input("a", shape=(4, 4), dtype="float64")
    b = g.input("b", shape=(4, 4), dtype="float64")
    w = g.param("w", value=rng.normal(size=(4, 4)))
    t = vf.tanh(a)
    shown = vf.transpose(t)
    later = vf.exp(shown)  # reads the view after t * t
    square = t * t
    loss = vf.sum(square) + vf.mean((w @ shown) @ b)
    feeds = {"a": rng.normal(size=(4, 4)), "b": rng.normal(size=(4, 4))}
    t_value = np.tanh(feeds["a"])
    grad_w = np.ones((4, 4)) / 16 @ feeds["b"].T @ t_value  # d mean(w @ t.T @ b) / d w
    run = vf.SequentialExecutor(g, optimize=False) if executor == "sequential" else \
        vf.ActorExecutor(g, schedule="network")
    try:
        for _ in range(3):
            got_shown, got_later, got_square = run.run(feeds, [shown, later, square])
            np.testing.assert_array_equal(got_shown, t_value.T)
            np.testing.assert_allclose(got_later, np.exp(t_value.T), rtol=1e-12)
            np.testing.assert_allclose(got_square, t_value * t_value, rtol=1e-12)
            _, grads = run.backward(feeds, loss)
            np.testing.assert_allclose(grads[w], grad_w, rtol=1e-12, atol=1e-15)
    finally:
        if executor == "actor":
            run.close()


def test_in_place_writes_never_touch_feeds_params_or_fetched_values():
    g = vf.Graph()
    x = g.input("x", shape=(None, 64), dtype="float64")
    w = g.param("w", value=np.linspace(-1, 1, 64 * 64).reshape(64, 64))
    h = vf.relu(vf.tanh(x @ w) + 1.0)  # tanh, add and relu may each write into the one before
    out = vf.sigmoid(h) * 2.0
    feed = np.random.default_rng(0).normal(size=(32, 64))
    kept_feed, kept_w = feed.copy(), w.value.copy()
    tape = vf.SequentialExecutor(g)
    first = tape.run({x: feed}, [h, out])
    source = tape.program([h, out], {x: feed})
    assert "out=v" in source  # something does run in place
    for _ in range(3):
        again = tape.run({x: feed}, [h, out])
    np.testing.assert_array_equal(feed, kept_feed)
    np.testing.assert_array_equal(w.value, kept_w)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.shares_memory(again[0], again[1])


@pytest.mark.parametrize("optimize", [False, True])
def test_a_training_step_writes_in_place_only_over_values_no_derivative_rule_reads(optimize):
    g = vf.Graph()
    x = g.input("x", shape=(None, 16), dtype="float64")
    w1, w2, b, c = (g.param(n, value=np.linspace(-1, 1, size).reshape(shape)) for n, size, shape in
                    [("w1", 256, (16, 16)), ("w2", 256, (16, 16)), ("b", 16, (16,)), ("c", 16, (16,))])
    h = vf.relu(x @ w1 + b)  # the add may write over the product, relu over the add: their rules read neither
    z = x @ w2
    p = z * c  # the product's rule reads z: nothing may write over it
    loss = vf.sum(h * h) + vf.sum(p) + vf.sum(vf.relu(z) * 2.0)
    feed = np.random.default_rng(0).normal(size=(8, 16))
    tape = vf.SequentialExecutor(g, optimize=optimize)
    want = tape.backward({x: feed}, loss)  # one vertex at a time, nothing in place
    lines = tape.program(loss, {x: feed}, backward=True).splitlines()
    if optimize:  # product, bias and relu as one vertex (rewrites.py), whose value stands for the two inner ones
        assert not any("out=" in line for line in lines)
        assert sum(line.count(" = ") == 2 and "(" not in line for line in lines) == 1
    else:
        assert sum("out=" in line for line in lines) == 2  # the add over the product, relu over the add
    with pytest.raises(vf.GraphError, match="one loss to fetch and the feeds"):
        tape.program(loss, backward=True)
    for _ in range(2):  # had relu(z) written over z, c's and w2's gradients would read it
        value, grads = tape.backward({x: feed}, loss)
        np.testing.assert_array_equal(value, want[0])
        for param in (w1, w2, b, c):
            np.testing.assert_array_equal(grads[param], want[1][param])


@settings(max_examples=25, deadline=None)
@given(batch=st.sampled_from([1, 3, 8, 40]), widths=st.lists(st.integers(1, 70), min_size=2, max_size=4),
       dtype=st.sampled_from(["float32", "float64"]), labels=st.booleans(), wrt=st.integers(0, 7), seed=st.integers(0, 99))
def test_bound_derivative_rules_give_the_bits_of_vjp(batch, widths, dtype, labels, wrt, seed):
    """Matmul, a bias's add, relu and cross-entropy bind their derivative rules for the compiled sweep
    (Op.bind_vjp); the first call runs their vjp through the execution core."""
    rng = np.random.default_rng(seed)
    g = vf.Graph("mlp")
    x = g.input("x", shape=(None, widths[0]), dtype=dtype)
    h, params = x, []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        w = g.param(f"w{i}", value=rng.normal(size=(n_in, n_out)).astype(dtype))
        b = g.param(f"b{i}", value=rng.normal(size=(n_out,)).astype(dtype))
        h = (h @ w) + b if i % 2 == 0 else b + (h @ w)
        h, params = vf.relu(h) if i < len(widths) - 2 else h, params + [w, b]
    feeds = {x: rng.normal(size=(batch, widths[0])).astype(dtype)}
    if labels:
        y = g.input("y", shape=(None,), dtype="int64")
        loss = vf.cross_entropy(h, y)
        feeds[y] = rng.integers(0, widths[-1], batch)
    else:
        loss = vf.sum(h * h)
    chosen = [p for i, p in enumerate([x, *params]) if wrt >> (i % 3) & 1] or params[:1]
    tape = vf.SequentialExecutor(g)
    want = tape.backward(feeds, loss, chosen)  # the first call: each vjp through the core
    for _ in range(2):  # compiled: the bound rules
        value, grads = tape.backward(feeds, loss, chosen)
        np.testing.assert_array_equal(value, want[0])
        for p in chosen:
            assert grads[p].dtype == want[1][p].dtype
            np.testing.assert_array_equal(grads[p], want[1][p])


def test_a_training_loops_compiled_step_still_sees_traces_new_shapes_and_new_params():
    g = vf.Graph()
    x = g.input("x", shape=(None, 5))
    w = g.param("w", value=np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3))
    loss = vf.sum(vf.relu(x @ w))
    rng = np.random.default_rng(0)
    feeds = {x: rng.normal(size=(4, 5)).astype(np.float32)}

    def by_hand(feed, weight):
        return feed.T @ ((feed @ weight) > 0).astype(np.float32)

    tape = vf.SequentialExecutor(g)
    for _ in range(3):  # checked, compiled, then the loop's own step
        np.testing.assert_allclose(tape.backward(feeds, loss)[1][w], by_hand(feeds[x], w.value), rtol=1e-6)
    with vf.trace() as tracer:
        tape.backward(feeds, loss.name)  # by its name: a loop's step of its own, traced all the same
        tape.backward(feeds, loss)
    assert {s.phase for s in tracer.spans} == {"forward", "backward"}
    assert sum(s.phase == "backward" and s.vertex == loss.inputs[0].name for s in tracer.spans) == 2
    w.value = w.value * -1.0  # an optimizer's new array
    feeds = {x: rng.normal(size=(7, 5)).astype(np.float32)}  # and another batch size
    for _ in range(3):
        value, grads = tape.backward(feeds, loss)
        np.testing.assert_allclose(grads[w], by_hand(feeds[x], w.value), rtol=1e-6)
        np.testing.assert_allclose(value, np.maximum(feeds[x] @ w.value, 0).sum(), rtol=1e-5)
    with pytest.raises(vf.FeedError, match="missing feeds for 'x'"):
        tape.backward({}, loss)


@pytest.mark.parametrize("g_shape", [(3, 4), (2, 3, 4)])
def test_a_bound_add_rule_sums_a_gradient_of_any_shape_as_vjp_does(g_shape):
    from vertexflow.autodiff.namespace import ArrayMath
    from vertexflow.graph import Spec
    from vertexflow.ops.elementwise import Add

    rng = np.random.default_rng(1)
    a, b, grad = rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.normal(size=g_shape)
    for needs in [(True, True), (True, False), (False, True)]:
        bound = Add().bind_vjp(np, needs, (Spec((3, 4), a.dtype), Spec((4,), b.dtype)), Spec((3, 4), a.dtype))
        got, want = bound(grad, a, b, a + b), Add().vjp(ArrayMath(np, needs), grad, (a, b), a + b)
        for x, y in zip(got, want):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)


def test_the_program_is_readable_python():
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    y = vf.exp(x) + 1.0
    tape = vf.SequentialExecutor(g)
    source = tape.program(y, {x: np.ones((2, 3), "float32")})
    assert source.startswith("def program(") and "return (" in source
    compile(source, "<listing>", "exec")


class FailsOnSecondCall(vf.ops.Op):
    """An op that fails only once it is running compiled (its second call)."""

    name = "fails_later"

    def __init__(self):
        self.calls = 0

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.calls += 1
        if self.calls >= 2:
            raise ValueError("broke on call 2")
        return x + 1


def test_a_failure_in_compiled_code_names_the_vertex_and_its_inputs():
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    y = vf.exp(FailsOnSecondCall()(vf.tanh(x), name="fragile")) * 2.0
    tape = vf.SequentialExecutor(g)
    feeds = {x: np.ones((4, 3), "float32")}
    tape.run(feeds, y)
    with pytest.raises(vf.VertexError, match=r"vertex 'fragile' \(fails_later.*\(4, 3\).*ValueError: broke on call 2") \
            as info:
        tape.run(feeds, y)
    assert info.value.vertex == "fragile" and isinstance(info.value.__cause__, ValueError)


class WrongShape(vf.ops.Op):
    name = "wrong_shape"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x[:1]


def test_an_op_returning_another_shape_than_it_declared_is_named_at_the_first_call():
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    y = WrongShape()(x, name="liar") + 1.0
    with pytest.raises(vf.VertexError, match=r"vertex 'liar' \(wrong_shape.*returned an array of \(1, 3\) float32, "
                                             r"but the op's infer declared \(4, 3\) float32"):
        vf.SequentialExecutor(g).run({x: np.ones((4, 3), "float32")}, y)


class Gate(vf.ops.Op):
    """Its value, and its derivative, each wait for an event of their own: a vertex that blocks."""

    name = "gate"

    def __init__(self):
        self.forward_open, self.backward_open = threading.Event(), threading.Event()

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.forward_open.wait(30)
        return x

    def vjp(self, F, g, xs, y):
        self.backward_open.wait(30)
        return (g,)


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_a_timeout_in_compiled_code_names_the_vertex_running(phase):
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    w = g.param("w", value=np.ones((3, 3), "float32"))
    gate = Gate()
    y = vf.sum(gate(vf.tanh(x @ w), name="stuck"))
    tape = vf.SequentialExecutor(g)
    feeds = {x: np.ones((2, 3), "float32")}
    gate.forward_open.set(), gate.backward_open.set()
    tape.run(feeds, y), tape.backward(feeds, y)  # first calls: checked; the next ones are compiled
    (gate.forward_open if phase == "forward" else gate.backward_open).clear()
    call = tape.run if phase == "forward" else tape.backward
    try:
        with pytest.raises(vf.ExecutionTimeout) as info:
            call(feeds, y, timeout=0.5)
    finally:
        gate.forward_open.set(), gate.backward_open.set()
    waiting = info.value.waiting
    first = next(iter(waiting))
    assert first == "stuck"
    assert waiting["stuck"] == ("running gate to return" if phase == "forward" else
                                "running the derivative of gate to return")
    tape.close()
