"""The behaviour every executor shares (run against each), and the tape's own features."""

import threading
import time

import numpy as np
import pytest

import vertexflow as vf

from .executors import Counting, Explode, MakeNaN, small_mlp

EXECUTORS = {
    "sequential": vf.SequentialExecutor,
    "actor": vf.ActorExecutor,
    # every vertex its own actor, every one on a worker thread
    "actor-unfused": lambda g, **o: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network", **o),
    # everything on the trio thread
    "actor-inline": lambda g, **o: vf.ActorExecutor(g, threads=0, schedule="network", **o),
    # vertices launched on three streams emulated by threads
    "stream": lambda g, **o: vf.StreamExecutor(g, streams=3, **o),
}


@pytest.fixture(params=sorted(EXECUTORS))
def make(request):
    made = []

    def factory(graph, **options):
        ex = EXECUTORS[request.param](graph, **options)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


# -- conformance: every executor ---------------------------------------------------
def test_run_returns_a_list_for_a_list_and_an_array_for_one(make):
    g, feeds, loss = small_mlp()
    ex = make(g)
    one = ex.run(feeds, loss)
    both = ex.run(feeds, [loss, "hidden"])
    assert isinstance(one, np.ndarray) or np.isscalar(one)
    assert isinstance(both, list) and len(both) == 2
    assert both[1].shape == (5, 16)
    np.testing.assert_array_equal(one, both[0])


def test_feeds_and_fetches_by_name(make):
    g, feeds, loss = small_mlp()
    ex = make(g)
    by_name = {node.name: value for node, value in feeds.items()}
    np.testing.assert_array_equal(ex.run(by_name, "loss"), ex.run(feeds, loss))


def test_only_vertices_the_fetches_need_run(make):
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    other = g.input("other", shape=(3,))
    counter = Counting()
    needed = counter(x)
    Explode()(x, name="never")  # a sibling branch nobody fetches
    Counting()(other)
    ex = make(g)
    np.testing.assert_array_equal(ex.run({x: np.ones(3, "float32")}, needed), 1.0)  # `other` need not be fed
    assert counter.calls == 1


@pytest.mark.parametrize(
    "feeds, words",
    [
        ({}, "missing feeds for 'x'"),
        ({"x": np.ones((2, 3), "float32"), "nope": 1}, "no vertex named 'nope'"),
        ({"x": np.ones((2, 3), "float32"), "w": np.ones(3)}, "it is a param, and only inputs are fed"),
        ({"x": np.ones((2, 4), "float32")}, r"feed for 'x' has shape \(2, 4\), but the input is \(None, 3\)"),
        ({"x": np.ones((2, 3), "float64")}, r"has dtype float64, but the input is float32; convert it with .astype\('float32'\)"),
        ({"x": np.ones(3, "float32")}, r"has shape \(3,\)"),
        ({"x": [["a", "b", "c"]]}, "has dtype <U1"),
    ],
)
def test_bad_feeds_are_refused_before_any_vertex_runs(make, feeds, words):
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    w = g.param("w", value=np.ones(3, "float32"))
    counter = Counting()
    y = counter(x * w)
    ex = make(g)
    with pytest.raises(vf.FeedError, match=words):
        ex.run(feeds, y)
    assert counter.calls == 0
    ex.run({x: np.ones((2, 3), "float32")}, y)  # still usable
    assert counter.calls == 1


def test_hostile_feeds_and_fetches_are_refused_before_any_vertex_runs(make):
    g = vf.Graph()
    i = g.input("i", shape=(2,), dtype="int32")
    f = g.input("f", shape=(2,), dtype="float32")
    a, b = g.input("a", shape=(None, 3)), g.input("b", shape=(None, 3))
    counter = Counting()
    both = counter(a) + b
    ex = make(g)
    cases = [
        (lambda: ex.run({i: [2**40, 1]}, i * 2), vf.FeedError, r"holds 1099511627776, outside the range of int32"),
        (lambda: ex.run({f: [1e40, 1.0]}, f * 2), vf.FeedError, r"holds values too large for float32"),
        (lambda: ex.run({a: np.ones((5, 3), "float32"), b: np.ones((4, 3), "float32")}, both), vf.FeedError,
         r"the feeds do not fit vertex 'add_1' \(add, built at .*\): it would get inputs of shapes \(5, 3\), \(4, 3\)"),
        (lambda: ex.run({i: [1, 2]}, None), vf.GraphError, "fetch must be a vertex, a vertex name, or a list of them; "
                                                           "got NoneType"),
        (lambda: ex.run({i: [1, 2]}, 5), vf.GraphError, "got int"),
        (lambda: ex.run({i: [1, 2], "i": [3, 4]}, i * 2), vf.FeedError, "input 'i' is fed twice"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()
    assert counter.calls == 0
    np.testing.assert_array_equal(ex.run({a: np.ones((2, 3), "float32"), b: np.ones((2, 3), "float32")}, both), 2.0)


def test_python_lists_are_fed_in_the_inputs_dtype(make):
    g = vf.Graph()
    x = g.input("x", shape=(2,))
    out = make(g).run({x: [1.5, 2.5]}, x * 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [3, 5])


def test_feeding_a_node_of_another_graph_is_refused(make):
    g, feeds, loss = small_mlp()
    other = vf.Graph("other").input("x", shape=(None, 8))
    with pytest.raises(vf.FeedError, match="belongs to graph 'other'"):
        make(g).run({**feeds, other: np.ones((5, 8), "float32")}, loss)


def test_a_failing_vertex_raises_vertex_error_and_the_executor_recovers(make):
    g = vf.Graph()
    x = g.input("x", shape=(None, 3))
    bad = Explode()(x * 2.0, name="kaboom")
    good = x + 1.0
    ex = make(g)
    with pytest.raises(vf.VertexError, match=r"vertex 'kaboom' \(explode, built at test_executor.py:\d+\) failed in forward on inputs of shapes \(2, 3\): ZeroDivisionError: boom") as info:
        ex.run({x: np.ones((2, 3), "float32")}, [good, bad])
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.vertex == "kaboom" and info.value.op == "explode"
    assert info.value.input_shapes == ((2, 3),)
    np.testing.assert_array_equal(ex.run({x: np.ones((2, 3), "float32")}, good), 2.0)


def test_nan_checking_names_the_vertex_that_made_it(make):
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.exp(MakeNaN()(x, name="nanny"))
    assert np.isnan(make(g).run({x: np.ones(3, "float32")}, y)[0])  # off by default
    ex = make(g, check_numerics=True)
    with pytest.raises(vf.VertexError, match="vertex 'nanny'.*NaN in the output") as info:
        ex.run({x: np.ones(3, "float32")}, y)
    assert isinstance(info.value.__cause__, FloatingPointError)
    with pytest.raises(vf.FeedError, match="feed for 'x' contains NaN"):
        ex.run({x: np.array([1, np.nan, 2], "float32")}, x * 1.0)
    np.testing.assert_array_equal(ex.run({x: np.ones(3, "float32")}, x * 2.0), 2.0)


def test_param_assignment_takes_effect_at_the_next_run(make):
    g, feeds, loss = small_mlp()
    ex = make(g)
    before = ex.run(feeds, loss)
    _, grads = ex.backward(feeds, loss)
    for p, grad in grads.items():
        p.value = p.value - 0.5 * grad  # an optimizer step
    after = ex.run(feeds, loss)
    assert after < before


def test_backward_equals_symbolic_grad_bitwise(make):
    g, feeds, loss = small_mlp()
    params = g.params
    symbolic = vf.grad(loss, params)
    ex = make(g)
    value, grads = ex.backward(feeds, loss)
    assert set(grads) == set(params)
    got = ex.run(feeds, [loss, *symbolic])
    np.testing.assert_array_equal(got[0], value)
    for p, s in zip(params, got[1:]):
        np.testing.assert_array_equal(s, grads[p])


def test_results_do_not_depend_on_the_executor():
    g, feeds, loss = small_mlp(dtype="float64")
    results = {}
    for name, cls in EXECUTORS.items():
        ex = cls(g)
        results[name] = ex.backward(feeds, loss)
        ex.close()
    reference = results["sequential"]
    for value, grads in results.values():
        np.testing.assert_array_equal(value, reference[0])
        for p in grads:
            np.testing.assert_array_equal(grads[p], reference[1][p])


def test_unknown_fetch_is_a_graph_error(make):
    g, feeds, loss = small_mlp()
    with pytest.raises(vf.GraphError, match="no vertex named 'lost'"):
        make(g).run(feeds, "lost")
    with pytest.raises(vf.GraphError, match="nothing to fetch"):
        make(g).run(feeds, [])


# -- the tape ------------------------------------------------------------------------
def test_tapes_are_cached_per_fetch_set_and_free_dead_values():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    a = vf.exp(x, name="a")
    b = vf.tanh(a, name="b")
    c = vf.relu(b, name="c")
    ex = vf.SequentialExecutor(g)
    tape = ex.tape([c])
    assert ex.tape([c]) is tape
    assert ex.tape([b, c]) is not tape
    by_name = {ins.node.name: ins for ins in tape.instructions}
    slot = tape.slot_of
    assert by_name["b"].free == (slot[a.id],)  # a dies once b has read it
    assert by_name["c"].free == (slot[b.id],)
    assert all(slot[c.id] not in ins.free for ins in tape.instructions)
    both = ex.tape([b, c])
    assert all(slot[b.id] not in ins.free for ins in both.instructions)  # fetched values live


def test_program_lists_one_line_per_instruction():
    g, feeds, loss = small_mlp()
    ex = vf.SequentialExecutor(g)
    listing = ex.program(loss)
    op_lines = [line for line in listing.splitlines() if line.strip()[:1].isdigit()]
    assert len(op_lines) == len(ex.tape([loss]).instructions) == 6
    assert op_lines[0].split()[:2] == ["0", "matmul"]
    assert "hidden" in listing and "(None, 16) float32" in listing


@pytest.mark.timeout(30)
def test_sequential_timeout_returns_at_the_deadline_and_names_the_running_vertex():
    release = threading.Event()

    class Sluggish(vf.ops.Op):
        name = "sluggish"

        def infer(self, x):
            return x

        def forward(self, xp, x):
            release.wait(20)  # blocks the thread it runs on
            return x

    g = vf.Graph()
    x = g.input("x", shape=(3,))
    y = vf.exp(Sluggish()(x, name="stuck"), name="after")
    ex = vf.SequentialExecutor(g)
    start = time.monotonic()
    with pytest.raises(vf.ExecutionTimeout, match="did not finish within 0.3 s; 2 vertices still waiting") as info:
        ex.run({x: np.ones(3, "float32")}, y, timeout=0.3)
    assert time.monotonic() - start < 1.3
    assert info.value.waiting == {"stuck": "running sluggish to return", "after": "its turn on the tape, after stuck"}
    release.set()
    np.testing.assert_allclose(ex.run({x: np.ones(3, "float32")}, y, timeout=10), np.e, rtol=1e-6)
    ex.close()


def test_backward_can_fetch_other_vertices_from_the_same_forward(make):
    g, feeds, loss = small_mlp()
    ex = make(g)
    value, grads, hidden = ex.backward(feeds, loss, fetch="hidden")
    np.testing.assert_array_equal(hidden, ex.run(feeds, "hidden"))
    v2, g2, (logits, again) = ex.backward(feeds, loss, fetch=["logits", "hidden"])
    np.testing.assert_array_equal(again, hidden)
    np.testing.assert_array_equal(v2, value)
    assert logits.shape == (5, 4)
    for p in grads:
        np.testing.assert_array_equal(g2[p], grads[p])
