"""Vertices that wait: async ops awaited by their actor, blocking ops on workers of their own, and no
executor choice that runs two of them one after another. Concurrency is proven by construction: each
test deadlocks (and times out) unless the vertices really wait at the same time."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trio

import vertexflow as vf
from vertexflow.factory import make_executor


class AtBarrier(vf.ops.Op):
    """Doubles its input once the other branch reached the barrier too (an op that does not say it waits)."""

    name = "at_barrier"

    def __init__(self, barrier: threading.Barrier, cost: float = 1e9):
        self.barrier, self._cost = barrier, cost

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.barrier.wait(timeout=10)
        return x * 2

    def cost(self, x):
        return self._cost


class BlockingAtBarrier(AtBarrier):
    blocking = True


def _two_branches(op_class, cost):
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    barrier = threading.Barrier(2)
    y = op_class(barrier, cost)(x + 1.0, name="left") + op_class(barrier, cost)(x + 2.0, name="right")
    return g, x, y


def test_the_default_executor_never_runs_two_waiting_vertices_one_after_the_other():
    """The issue's graph: two expensive user ops meeting at a barrier; auto may not profile them on the tape."""
    g, x, y = _two_branches(AtBarrier, 1e9)
    with vf.ActorExecutor(g, threads=2) as ex:
        for _ in range(3):
            np.testing.assert_array_equal(ex.run({x: np.ones(4)}, y, timeout=20), np.full(4, 10.0))
        described = ex.describe(y)
    assert "runs as: network" in described and "do not say whether they wait" in described


def test_blocking_vertices_get_a_worker_each_whatever_their_cost():
    g, x, y = _two_branches(BlockingAtBarrier, 1.0)  # cheap: without `blocking` they would share an actor
    with vf.ActorExecutor(g, threads=2) as ex:
        np.testing.assert_array_equal(ex.run({x: np.ones(4)}, y, timeout=20), np.full(4, 10.0))
        described = ex.describe(y)
    assert "'left' (at_barrier)" in described and "blocks (a worker of its own)" in described


class Ring(vf.ops.Op):
    """Vertex k sets its own event, then waits for vertex k+1's: all must wait at once, or none returns."""

    name = "ring"

    def __init__(self, events, k):
        self.events, self.k = events, k

    def infer(self, x):
        return x

    async def forward(self, xp, x):
        self.events[self.k].set()
        with trio.fail_after(10):
            await self.events[(self.k + 1) % len(self.events)].wait()
        return x + self.k

    def vjp(self, F, g, xs, y):
        return (g,)


def _ring(n=8):
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    events = [trio.Event() for _ in range(n)]
    outs = [Ring(events, k)(x * float(k + 1), name=f"ring_{k}") for k in range(n)]
    total = outs[0]
    for o in outs[1:]:
        total = total + o
    return g, x, vf.sum(total), events


@pytest.mark.parametrize("threads", [0, 2])
def test_eight_async_vertices_wait_at_once_holding_no_thread(threads):
    g, x, loss, events = _ring()
    with vf.ActorExecutor(g, threads=threads) as ex:
        value = ex.run({x: np.ones(3)}, loss, timeout=20)
        assert "awaits (no thread held)" in ex.describe(loss)
    assert value == 3 * sum(k + 1 for k in range(8)) + 3 * sum(range(8))
    assert all(e.is_set() for e in events)


class Sleep(vf.ops.Op):
    """tanh(x) after an await: the async op of the benchmark, differentiable, its rule async too."""

    name = "sleep"

    def __init__(self, seconds=0.001, fail=False):
        self.seconds, self.fail = seconds, fail

    def infer(self, x):
        return x

    async def forward(self, xp, x):
        await trio.sleep(self.seconds)
        if self.fail:
            raise ConnectionError("the remote end went away")
        return xp.tanh(x)

    async def vjp(self, F, g, xs, y):
        await trio.sleep(self.seconds)
        return (F.mul(g, F.sub(1.0, F.mul(y, y))),)


def _sleepers(n=4, **options):
    g = vf.Graph()
    x = g.input("x", shape=(None, 5), dtype="float64")
    w = g.param("w", value=np.linspace(-1, 1, 25).reshape(5, 5))
    h = x @ w
    total = None
    for k in range(n):
        s = Sleep(**options)(h * float(k + 1), name=f"sleep_{k}")
        total = s if total is None else total + s
    return g, x, w, vf.mean(total)


def test_async_ops_give_the_same_bits_on_the_tape_and_on_the_actors():
    g, x, w, loss = _sleepers()
    feeds = {x: np.random.default_rng(0).normal(size=(3, 5))}
    tape = vf.SequentialExecutor(g)
    want, grads = tape.backward(feeds, loss)
    with vf.ActorExecutor(g, threads=2) as ex:
        for _ in range(2):
            got, got_grads = ex.backward(feeds, loss)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_grads[w], grads[w])
            np.testing.assert_array_equal(ex.run(feeds, loss), tape.run(feeds, loss))


@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_an_async_op_failing_names_its_vertex(executor):
    g, x, w, loss = _sleepers(2, fail=True)
    with make_executor(g, executor) as ex:
        with pytest.raises(vf.VertexError, match=r"vertex 'sleep_0' \(sleep.*ConnectionError: the remote end went "
                                                 r"away") as info:
            ex.run({x: np.ones((2, 5))}, loss)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_the_tape_awaits_from_a_trio_worker_thread_and_refuses_to_block_a_trio_loop():
    g, x, w, loss = _sleepers(2)
    tape = vf.SequentialExecutor(g)
    feeds = {x: np.ones((2, 5))}
    want = tape.run(feeds, loss)

    async def main():
        got = await trio.to_thread.run_sync(tape.run, feeds, loss)  # trio.from_thread awaits the vertices
        np.testing.assert_array_equal(got, want)
        with pytest.raises(vf.AsyncContextError, match="would block the trio loop"):
            vf.SequentialExecutor(g).run(feeds, loss)

    trio.run(main)


class Parked(vf.ops.Op):
    """Awaits an event nobody sets (until the test does): a vertex that waits forever."""

    name = "parked"

    def __init__(self):
        self.release = None

    def infer(self, x):
        return x

    async def forward(self, xp, x):
        if self.release is not None:
            await self.release.wait()
        return x + 1


def _parked():
    g = vf.Graph()
    x = g.input("x", shape=(2,), dtype="float64")
    op = Parked()
    return g, x, vf.sum(op(x * 2.0, name="parked_vertex") + 1.0), op


@pytest.mark.parametrize("threads", [0, 2])
def test_a_stream_of_async_vertices_times_out_naming_the_vertex_then_runs_again(threads):
    g, x, y, op = _parked()
    with vf.ActorExecutor(g, threads=threads) as ex:
        op.release = trio.Event()  # never set: the step waits
        with pytest.raises(vf.ExecutionTimeout, match="parked_vertex") as info:
            list(ex.run_stream([{x: np.ones(2)}] * 3, y, timeout=0.5))
        assert "parked_vertex" in info.value.waiting
        op.release = None
        assert list(ex.run_stream([{x: np.ones(2)}] * 3, y, timeout=20)) == [8.0] * 3


@pytest.mark.parametrize("threads", [0, 2])
async def test_cancelling_a_stream_of_async_vertices_leaves_the_executor_usable(threads):
    g, x, y, op = _parked()
    with trio.fail_after(30):
        async with vf.ActorExecutor(g, threads=threads) as ex:
            op.release = trio.Event()
            with trio.move_on_after(0.5) as scope:
                async for _ in ex.stream([{x: np.ones(2)}] * 3, y):
                    pass
            assert scope.cancelled_caught
            with pytest.raises(vf.ExecutionTimeout, match="parked_vertex"):
                async for _ in ex.stream([{x: np.ones(2)}] * 2, y, timeout=0.5):
                    pass
            op.release = None
            assert [v async for v in ex.stream([{x: np.ones(2)}] * 2, y, timeout=20)] == [8.0, 8.0]
            assert await ex.arun({x: np.ones(2)}, y, timeout=20) == 8.0


def test_the_stream_executor_awaits_async_vertices_and_takes_a_timeout():
    g, x, w, loss = _sleepers(2)
    feeds = {x: np.ones((2, 5))}
    with vf.StreamExecutor(g, streams=2) as ex:
        got = list(ex.run_stream([feeds] * 2, loss, timeout=20))
    np.testing.assert_array_equal(got[0], vf.SequentialExecutor(g).run(feeds, loss))


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "1"])
def test_a_deadline_must_be_a_positive_number_of_seconds(timeout):
    g, x, w, loss = _sleepers(1)
    for ex in (vf.SequentialExecutor(g), vf.ActorExecutor(g), vf.StreamExecutor(g)):
        with pytest.raises(ValueError, match="timeout= takes a number of seconds > 0"):
            ex.run({x: np.ones((2, 5))}, loss, timeout=timeout)
        ex.close()


@pytest.mark.parametrize("executor", ["sequential", "actor"])
def test_an_await_is_traced_as_a_wait_and_the_work_as_the_span(executor):
    g, x, w, loss = _sleepers(2, seconds=0.05)
    with make_executor(g, executor) as ex, vf.trace() as t:
        ex.run({x: np.ones((2, 5))}, loss)
    awaits = {w.vertex: w for w in t.waits if w.what == "await"}
    assert set(awaits) == {"sleep_0", "sleep_1"}
    for name, wait in awaits.items():
        (span,) = [s for s in t.spans if s.vertex == name]
        assert wait.lane is None  # no thread was held
        assert wait.end - wait.start >= 0.05 > span.duration  # the sleep is the wait, not the work
        assert wait.end <= span.start + 1e-6


def test_arun_under_asyncio_awaits_async_vertices_on_the_actors_loop():
    import asyncio

    g, x, w, loss = _sleepers(3)
    feeds = {x: np.ones((2, 5))}
    want = vf.SequentialExecutor(g).run(feeds, loss)

    async def main():
        with vf.ActorExecutor(g, threads=2) as ex:
            return await asyncio.wait_for(ex.arun(feeds, loss), 20)

    np.testing.assert_array_equal(asyncio.run(main()), want)


def test_as_many_blocking_vertices_wait_at_once_as_there_are_threads():
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    barrier = threading.Barrier(3)
    parts = [BlockingAtBarrier(barrier, 1.0)(x + float(k), name=f"b{k}") for k in range(3)]
    y = parts[0] + parts[1] + parts[2]
    with vf.ActorExecutor(g, threads=3) as ex:
        for _ in range(2):  # the first call and the ones after it: never calibrated on the tape
            np.testing.assert_array_equal(ex.run({x: np.ones(4)}, y, timeout=20), np.full(4, 12.0))


def test_the_stream_executor_times_out_a_stream_naming_the_parked_vertex_then_runs_again():
    g, x, y, op = _parked()
    with vf.StreamExecutor(g, streams=2) as ex:
        op.release = trio.Event()  # never set
        with pytest.raises(vf.ExecutionTimeout, match="parked_vertex"):
            list(ex.run_stream([{x: np.ones(2)}] * 2, y, timeout=0.5))
        op.release = None
        assert list(ex.run_stream([{x: np.ones(2)}] * 2, y, timeout=20)) == [8.0, 8.0]
    _no_thread_left_waiting()


def test_the_tape_times_out_an_async_vertex_and_its_thread_stops_waiting():
    g, x, y, op = _parked()
    with vf.SequentialExecutor(g) as tape:
        op.release = trio.Event()  # never set
        with pytest.raises(vf.ExecutionTimeout, match="parked_vertex"):
            tape.run({x: np.ones(2)}, y, timeout=0.5)
        op.release = None
        assert tape.run({x: np.ones(2)}, y, timeout=20) == 8.0
    _no_thread_left_waiting()


def _no_thread_left_waiting():
    """No thread of ours still awaits the parked vertex (the cancelled waits end their threads)."""
    deadline = threading.Event()
    for _ in range(100):
        if not any(t.name.startswith(("vf-stream", "vf-tape")) for t in threading.enumerate()):
            return
        deadline.wait(0.05)
    raise AssertionError(f"threads left: {[t.name for t in threading.enumerate()]}")
