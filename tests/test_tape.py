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
@given(case=random_graph(), optimize=st.booleans())
def test_compiled_calls_give_the_bits_of_the_first_checked_call(case, optimize):
    g, outputs, loss, params, feeds = case
    tape = vf.SequentialExecutor(g, optimize=optimize)
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
