"""The memory plan: reused output buffers, and values handed out that nothing overwrites."""

import contextlib
import gc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow.memory import BufferPool

from .actors.test_actor_executor import random_graph


def test_a_held_buffer_is_never_handed_out_again():
    pool = BufferPool()
    a = pool.take((4, 4), np.dtype("float64"))
    b = pool.take((4, 4), np.dtype("float64"))
    assert a is not b
    view = a[1:]  # a view keeps its base busy
    del a
    c = pool.take((4, 4), np.dtype("float64"))
    assert c is not b and c.base is None and not np.shares_memory(c, view)
    del view, c
    d = pool.take((4, 4), np.dtype("float64"))
    assert pool.reused == 1
    assert d is not b


def test_buffers_of_other_shapes_and_dtypes_are_apart():
    pool = BufferPool()
    pool.take((3,), np.dtype("float32"))
    x = pool.take((3,), np.dtype("float64"))
    assert x.dtype == np.float64 and pool.reused == 0


def test_a_bucket_of_hoarded_buffers_is_forgotten_not_scanned_forever():
    pool = BufferPool(bucket_limit=4)
    hoard = [pool.take((2,), np.dtype("float64")) for _ in range(10)]
    assert len({id(h) for h in hoard}) == 10
    assert pool.held_bytes() <= 4 * 16


def test_buckets_unused_for_long_are_dropped():
    pool = BufferPool(keep_steps=2)
    pool.take((5,), np.dtype("float64"))
    for _ in range(32):
        pool.end_step()
    assert pool.held_bytes() == 0


def _pool_everything(ex):
    ex.buffer_min_bytes = 0  # every output that can go in a buffer does, however small
    return ex


@given(case=random_graph())
def test_values_are_the_same_with_and_without_reused_buffers(case):
    g, outputs, loss, params, feeds = case
    plain = vf.SequentialExecutor(g, buffers=False)
    pooled = _pool_everything(vf.SequentialExecutor(g))
    for _ in range(2):  # the second run meets the first run's buffers
        for a, b in zip(plain.run(feeds, outputs), pooled.run(feeds, outputs)):
            np.testing.assert_array_equal(b, a)
        (va, ga), (vb, gb) = plain.backward(feeds, loss), pooled.backward(feeds, loss)
        np.testing.assert_array_equal(vb, va)
        for p in ga:
            np.testing.assert_array_equal(gb[p], ga[p])
    assert pooled.buffers.reused > 0


@given(case=random_graph())
def test_values_handed_out_are_never_overwritten_by_later_steps(case):
    g, outputs, loss, params, feeds = case
    ex = _pool_everything(vf.SequentialExecutor(g))
    kept = [ex.run(feeds, outputs), ex.backward(feeds, loss)]
    copies = [[np.array(v) for v in kept[0]], (np.array(kept[1][0]), {p: np.array(v) for p, v in kept[1][1].items()})]
    rng = np.random.default_rng(0)
    for _ in range(20):
        other = {k: rng.normal(size=v.shape) for k, v in feeds.items()}
        ex.run(other, outputs)
        ex.backward(other, loss)
    for got, want in zip(kept[0], copies[0]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kept[1][0], copies[1][0])
    for p in copies[1][1]:
        np.testing.assert_array_equal(kept[1][1][p], copies[1][1][p])


def test_a_fetched_param_is_a_copy_and_changing_it_changes_nothing():
    g = vf.Graph()
    w = g.param("w", value=np.arange(3.0))
    x = g.input("x", shape=(3,), dtype="float64")
    ex = vf.SequentialExecutor(g)
    got_w, got_x = ex.run({x: np.ones(3)}, [w, x])
    got_w[:] = -1
    got_x[:] = -1
    np.testing.assert_array_equal(w.value, [0, 1, 2])
    np.testing.assert_array_equal(ex.run({x: np.ones(3)}, w * 1.0), [0, 1, 2])


@pytest.mark.parametrize("rows", [4, 512])  # 512: above the pool's threshold, its buffers in play
@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_a_reshape_writes_its_copy_into_a_buffer_and_its_view_is_never_written_in_place(rows, executor):
    g = vf.Graph()
    x = g.input("x", shape=(rows, 64), dtype="float64")
    w = g.param("w", value=np.arange(rows * 64.0).reshape(rows, 64))
    a = x * 2.0
    viewed = -vf.reshape(a, (rows * 2, 32))  # a view of a: neg must not write into it
    copied = vf.exp(vf.reshape(vf.transpose(a), (64 * rows,)))  # a copy: into a buffer of its own
    after = a + 1.0  # reads a after both
    of_param = vf.reshape(vf.transpose(w), (64 * rows,))
    feed = np.random.default_rng(0).normal(size=(rows, 64))
    ex = vf.SequentialExecutor(g) if executor == "sequential" else vf.ActorExecutor(g, threads=2)
    with ex if executor == "actor" else contextlib.nullcontext():
        for _ in range(3):
            got = ex.run({x: feed}, [viewed, copied, after, of_param])
            np.testing.assert_array_equal(got[0], -(feed * 2).reshape(rows * 2, 32))
            np.testing.assert_array_equal(got[1], np.exp((feed * 2).T.reshape(-1)))
            np.testing.assert_array_equal(got[2], feed * 2 + 1)
            got[3][:] = -1  # a copy of the param's values, never the param
            np.testing.assert_array_equal(w.value, np.arange(rows * 64.0).reshape(rows, 64))


@pytest.mark.timeout(120)
def test_memory_stays_flat_over_ten_thousand_steps():
    import tracemalloc

    g = vf.Graph()
    x = g.input("x", shape=(None, 16), dtype="float64")
    w = g.param("w", value=np.full((16, 16), 0.01))
    h = vf.tanh(x @ w)
    loss = vf.sum(vf.sigmoid(h) * h)
    ex = _pool_everything(vf.SequentialExecutor(g))
    feeds = {x: np.ones((8, 16))}
    held, traced = [], []
    tracemalloc.start()
    try:
        for step in range(10_000):
            ex.backward(feeds, loss)
            if step in (100, 9_999):
                gc.collect()
                held.append(ex.buffers.held_bytes())
                traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert held[1] <= held[0]
    assert traced[1] - traced[0] < 64 * 1024  # nothing grows with the steps


@given(case=random_graph(), threads=st.sampled_from([0, 2]))
def test_actor_streams_and_backward_never_overwrite_what_they_handed_out(case, threads):
    g, outputs, loss, params, feeds = case
    rng = np.random.default_rng(1)
    batches = [{k: rng.normal(size=v.shape) for k, v in feeds.items()} for _ in range(24)]
    seq = vf.SequentialExecutor(g, buffers=False)
    with _pool_everything(vf.ActorExecutor(g, threads=threads, depth=4, heavy_flops=0, schedule="network")) as act:
        streamed = list(act.run_stream(batches[:4], outputs))  # kept by the caller
        kept_value, kept_grads = act.backward(batches[0], loss)
        want = [seq.run(b, outputs) for b in batches[:4]]
        for _ in act.run_stream(batches[4:], outputs):  # 20 later steps through the same buffers
            pass
        for b in batches[4:8]:
            act.backward(b, loss)
        for got, expected in zip(streamed, want):
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
        v_seq, g_seq = seq.backward(batches[0], loss)
        np.testing.assert_array_equal(kept_value, v_seq)
        for p in g_seq:
            np.testing.assert_array_equal(kept_grads[p], g_seq[p])
        assert act.buffers.reused > 0


def test_a_stream_reads_each_feed_when_it_is_given_not_later():
    """A loader that refills one array for every batch gets the sequential executor's results."""
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    out = vf.tanh(x) * 2.0

    def refilled():
        buffer = np.zeros(4)
        for k in range(12):
            buffer[:] = k
            yield {x: buffer}

    with vf.ActorExecutor(g, threads=2, depth=4, heavy_flops=0, schedule="network") as act:
        got = list(act.run_stream(refilled(), out))
    np.testing.assert_array_equal(np.array(got)[:, 0], np.tanh(np.arange(12.0)) * 2.0)


@pytest.mark.parametrize("threads", [0, 2])
def test_a_call_of_the_actor_network_leaves_no_cycle_holding_its_buffers(threads):
    """With the cyclic collector off, a caller that lets each result go gets its buffers back call after call:
    nothing of a finished step (its state, its request, its jobs) keeps them alive but the caller."""
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    out = vf.tanh(vf.sigmoid(x) + vf.tanh(x))
    feeds = {x: np.ones((64, 64))}
    with _pool_everything(vf.ActorExecutor(g, threads=threads, heavy_flops=0, schedule="network")) as ex:
        ex.run(feeds, out)
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                ex.run(feeds, out)
            held = ex.runner.buffers.held_bytes()
            assert held > 0
            for _ in range(20):
                ex.run(feeds, out)
            # A buffer a worker has not let go of yet when the next call takes one may add one more; a finished
            # step held by a cycle would add all of its buffers at every call.
            assert ex.runner.buffers.held_bytes() <= 2 * held
        finally:
            gc.enable()
