"""ActorExecutor: parity on random graphs, parallelism and pipelining by construction, failures."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow.actors.program import compile_program

from ..executors import Counting, Explode, small_mlp

# -- random graphs -------------------------------------------------------------------
UNARY = [vf.tanh, vf.sigmoid, vf.relu, vf.negative, lambda x: vf.exp(vf.tanh(x))]
BINARY = [vf.add, vf.subtract, vf.multiply, vf.maximum, lambda a, b: a * 0.5 + b]


@st.composite
def random_graph(draw):
    """A random DAG over (3, 4) float64 values: shared inputs, repeated arguments, reductions, matmuls."""
    g = vf.Graph("random")
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    nodes = [g.input("a", shape=(None, 4), dtype="float64"), g.input("b", shape=(3, 4), dtype="float64")]
    params = [g.param("w", value=rng.normal(size=(3, 4))), g.param("v", value=rng.normal(size=(4,)))]
    nodes += params
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "self", "matmul", "reduce"]))
        pick = lambda: nodes[draw(st.integers(0, len(nodes) - 1))]  # noqa: E731
        if kind == "unary":
            node = draw(st.sampled_from(UNARY))(pick())
        elif kind == "binary":
            node = draw(st.sampled_from(BINARY))(pick(), pick())
        elif kind == "self":
            x = pick()
            node = x * x  # one vertex feeding one op twice
        elif kind == "matmul":
            x, y = pick(), pick()
            if x.shape not in ((3, 4), (None, 4)) or y.shape not in ((3, 4), (None, 4)):
                continue
            node = (x @ y.T) @ nodes[1]  # (3, 3) @ (3, 4): back to (3, 4)
        else:
            node = vf.sum(pick(), axis=0, keepdims=True) + pick()
        nodes.append(node)
    outputs = draw(st.lists(st.sampled_from(nodes[4:] or nodes), min_size=1, max_size=3, unique_by=id))
    loss = vf.sum(outputs[0] * outputs[-1]) + vf.mean(nodes[-1])
    feeds = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 4))}
    return g, outputs, loss, params, feeds


@given(case=random_graph(), heavy=st.sampled_from([0.0, 30.0, 1e9]), threads=st.sampled_from([0, 2]))
def test_random_graphs_match_sequential_bitwise(case, heavy, threads):
    g, outputs, loss, params, feeds = case
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, threads=threads, heavy_flops=heavy, schedule="network") as act:
        for want, got in zip(seq.run(feeds, outputs), act.run(feeds, outputs)):
            np.testing.assert_array_equal(got, want)
        (v_seq, g_seq), (v_act, g_act) = seq.backward(feeds, loss), act.backward(feeds, loss)
        np.testing.assert_array_equal(v_act, v_seq)
        assert set(g_act) == set(g_seq) <= set(params)  # the params the loss depends on
        for p in g_seq:
            np.testing.assert_array_equal(g_act[p], g_seq[p])
        wrt = [g["a"], *params]
        _, g_seq = seq.backward(feeds, loss, wrt)
        _, g_act = act.backward(feeds, loss, wrt)
        for w in wrt:
            np.testing.assert_array_equal(g_act[w], g_seq[w])


# -- parallelism and pipelining, proven by construction --------------------------------
class Meet(vf.ops.Op):
    """Identity that must meet another vertex at a barrier: only concurrent branches pass."""

    name = "meet"

    def __init__(self, barrier: threading.Barrier):
        self.barrier = barrier

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.barrier.wait(timeout=10)  # a sequential run can only time out here
        return x

    def cost(self, x):
        return 1e12  # expensive: an actor of its own, on a worker thread


def test_independent_branches_run_at_the_same_time():
    barrier = threading.Barrier(2)
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    left = Meet(barrier)(vf.exp(x), name="left")
    right = Meet(barrier)(vf.tanh(x), name="right")
    out = left + right
    with vf.ActorExecutor(g, threads=2, schedule="network") as act:
        got = act.run({x: np.ones(3, "float32")}, out, timeout=30)
    np.testing.assert_allclose(got, np.exp(1) + np.tanh(1), rtol=1e-6)
    barrier.reset()
    seq_barrier = threading.Barrier(2)
    g2 = vf.Graph()
    y = g2.input("y", shape=(3,))
    lone = Meet(seq_barrier)(y) + Meet(seq_barrier)(y)
    seq_barrier.wait = lambda timeout: threading.Barrier.wait(seq_barrier, timeout=0.05)
    with pytest.raises(vf.VertexError, match="BrokenBarrierError"):
        vf.SequentialExecutor(g2).run({y: np.ones(3, "float32")}, lone)


class Relay(vf.ops.Op):
    """Stage of a two-stage pipeline: stage 2 of step 0 waits until stage 1 of step 1 has run."""

    name = "relay"

    def __init__(self, stage: int, events: dict):
        self.stage = stage
        self.events = events

    def infer(self, x):
        return x

    def forward(self, xp, x):
        step = int(x[0])
        if self.stage == 1:
            self.events.setdefault(step, threading.Event()).set()
        elif step == 0:
            assert self.events.setdefault(1, threading.Event()).wait(timeout=10), "step 1 never entered"
        return x

    def cost(self, x):
        return 1e12


def test_stream_lets_the_next_step_in_while_the_last_is_deeper():
    events: dict = {}
    g = vf.Graph()
    x = g.input("x", shape=(1,), dtype="float64")
    out = Relay(2, events)(Relay(1, events)(x, name="stage1"), name="stage2")
    feeds = [{x: np.array([float(k)])} for k in range(4)]
    with vf.ActorExecutor(g, threads=2, depth=2, schedule="network") as act:
        got = list(act.run_stream(feeds, out))
    assert [float(o[0]) for o in got] == [0.0, 1.0, 2.0, 3.0]  # results in input order


# -- the async API ---------------------------------------------------------------------
@pytest.mark.timeout(30)
async def test_async_run_backward_and_persistent_network():
    g, feeds, loss = small_mlp("float64")
    seq = vf.SequentialExecutor(g)
    async with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        assert await act.arun(feeds, loss) == seq.run(feeds, loss)
        host = act._hosts[0]
        network = next(iter(host.networks.values()))
        for _ in range(3):
            await act.arun(feeds, loss)
        assert list(host.networks.values()) == [network]  # wired once, kept
        value, grads = await act.abackward(feeds, loss)
        v2, g2 = seq.backward(feeds, loss)
        assert value == v2
        for p in grads:
            np.testing.assert_array_equal(grads[p], g2[p])


@pytest.mark.timeout(30)
async def test_stream_keeps_order_and_bounds_steps_in_flight():
    g = vf.Graph()
    x = g.input("x", shape=(2,), dtype="float64")
    entered = Counting()
    out = vf.exp(entered(x))
    batches = [{x: np.full(2, float(k))} for k in range(12)]
    async with vf.ActorExecutor(g, threads=0, depth=3, schedule="network") as act:
        seen = []
        async for result in act.stream(iter(batches), out):
            seen.append(result)
            # back-pressure: nothing past the window has entered the graph
            assert entered.calls <= len(seen) + 3
        np.testing.assert_array_equal(np.array(seen)[:, 0], np.exp(np.arange(12.0)))


@pytest.mark.timeout(30)
async def test_two_tasks_running_on_one_network_get_their_own_results():
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    out = vf.tanh(x) * 2.0
    results = {}
    async with vf.ActorExecutor(g, threads=2, schedule="network") as act:

        async def one(k):
            results[k] = await act.arun({x: np.full(3, float(k))}, out)

        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(one, k)
    for k, value in results.items():
        np.testing.assert_array_equal(value, np.tanh(np.full(3, float(k))) * 2.0)


# -- failures ------------------------------------------------------------------------------
class Stuck(vf.ops.Op):
    """Never finishes until released: its consumers never get their input."""

    name = "stuck"

    def __init__(self, release: threading.Event):
        self.release = release

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.release.wait(timeout=30)
        return x

    def cost(self, x):
        return 1e12


def test_timeout_lists_waiting_vertices_and_the_executor_recovers():
    release = threading.Event()
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    stuck = Stuck(release)(x, name="stuck")
    after = vf.exp(stuck, name="after")
    fine = vf.tanh(x, name="fine")
    act = vf.ActorExecutor(g, threads=2, schedule="network")
    try:
        with pytest.raises(vf.ExecutionTimeout, match="still waiting") as info:
            act.run({x: np.ones(3, "float32")}, [after, fine], timeout=0.3)
        waiting = info.value.waiting
        assert "after" in waiting and "input 0 ('stuck')" in waiting["after"]
        assert "stuck" in waiting and "running stuck" in waiting["stuck"]
        release.set()
        np.testing.assert_allclose(act.run({x: np.ones(3, "float32")}, fine), np.tanh(1), rtol=1e-6)
        np.testing.assert_allclose(act.run({x: np.ones(3, "float32")}, after, timeout=10), np.e, rtol=1e-6)
    finally:
        release.set()
        act.close()


def test_failure_in_backward_names_the_vertex_and_the_executor_recovers():
    class BadGrad(vf.ops.Op):
        name = "bad_grad"

        def infer(self, x):
            return x

        def forward(self, xp, x):
            return x

        def vjp(self, F, g, xs, y):
            raise ArithmeticError("no slope here")

    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    w = g.param("w", value=np.ones(3))
    loss = vf.sum(BadGrad()(x * w, name="flat"))
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        with pytest.raises(vf.VertexError, match="vertex 'flat' .* failed in backward.*ArithmeticError") as info:
            act.backward({x: np.ones(3)}, loss)
        assert isinstance(info.value.__cause__, ArithmeticError)
        assert act.run({x: np.ones(3)}, loss) == 3.0


@pytest.mark.timeout(30)
async def test_cancelling_a_stream_leaves_nothing_running_and_the_executor_works():
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    out = vf.tanh(x @ x) @ x
    batches = ({x: np.full((64, 64), 0.01 * k)} for k in range(10_000))
    async with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        taken = 0
        with trio.move_on_after(0.2):
            async for _ in act.stream(batches, out):
                taken += 1
        assert taken > 0
        pool = act._pool
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(100):  # steps already in flight finish and are dropped
            if pool.busy == 0 and all(not n.steps for n in act._hosts[0].networks.values()):
                break
            await trio.sleep(0.01)
        assert pool.busy == 0
        assert all(not n.steps for n in act._hosts[0].networks.values())
        value = await act.arun({x: np.eye(64)}, out)
        np.testing.assert_allclose(value, np.tanh(np.eye(64)))
    assert not [t for t in threading.enumerate() if t.name.startswith("vf-worker")]


def test_vertex_error_in_a_stream_is_raised_for_that_step():
    g = vf.Graph()
    x = g.input("x", shape=(1,), dtype="float64")
    out = vf.where(x > 2.5, Explode()(x, name="bomb"), x)
    with vf.ActorExecutor(g, schedule="network") as act:
        got = []
        with pytest.raises(vf.VertexError, match="'bomb'"):
            for value in act.run_stream(({x: np.array([float(k)])} for k in range(5)), out):
                got.append(value)
        assert got == []  # the bomb's vertex runs for every step: the first step fails
        assert act.run({x: np.array([1.0])}, x * 2.0) == 2.0


def test_close_stops_every_thread_and_the_executor_can_run_again():
    g, feeds, loss = small_mlp()
    act = vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network")
    act.run(feeds, loss)
    assert any(t.name.startswith("vf-worker") for t in threading.enumerate())
    act.close()
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("vf-worker") or n == "vf-actor-host"]
    assert act.run(feeds, loss) == vf.SequentialExecutor(g).run(feeds, loss)
    act.close()


def test_sync_run_inside_trio_points_to_arun():
    g, feeds, loss = small_mlp()
    act = vf.ActorExecutor(g)

    async def main():
        act.run(feeds, loss)

    with pytest.raises(vf.AsyncContextError, match="await executor.arun"):
        trio.run(main)
    act.close()


def test_fine_grained_chains_fuse_into_few_actors():
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    h = x
    for i in range(50):
        h = vf.tanh(h) * 0.5 + h if i % 2 else vf.relu(h) - 0.1
    act = vf.ActorExecutor(g)
    description = act.describe(h, {x: np.zeros((64, 64))})
    assert description.count("actor ") == 1 and "[fused]" in description
    act.close()


CTRL_C_SCRIPT = r"""
import os, signal, threading
import numpy as np
import vertexflow as vf

release = threading.Event()

class Slow(vf.ops.Op):
    name = "slow"
    def infer(self, x):
        return x
    def forward(self, xp, x):
        release.wait(timeout=2)
        return x
    def cost(self, x):
        return 1e12

g = vf.Graph()
x = g.input("x", shape=(3,))
out = vf.exp(Slow()(x))
act = vf.ActorExecutor(g, threads=2, schedule="network")
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    act.run({x: np.zeros(3, "float32")}, out)
except KeyboardInterrupt:
    print("interrupted")
release.set()
print("again", float(act.run({x: np.zeros(3, "float32")}, out, timeout=10)[0]))
act.close()
left = sorted(t.name for t in threading.enumerate() if t.name.startswith("vf-"))
print("left", left)
"""


def test_ctrl_c_during_a_sync_run_leaves_a_working_executor_and_no_threads(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == ["interrupted", "again 1.0", "left []"]


# -- choosing between the network and one actor (schedule="auto") ------------------------
def test_a_chain_runs_as_one_actor_from_the_first_measured_call():
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    h = x
    for _ in range(6):
        h = vf.tanh(h @ x)
    with vf.ActorExecutor(g, threads=2, heavy_flops=0) as act:
        first = act.run({x: np.eye(64) * 0.1}, h)
        assert act.describe(h).startswith("runs as: tape (measured: no two expensive vertices can run at once")
        assert act._hosts == []  # no network was ever wired
        np.testing.assert_array_equal(first, vf.SequentialExecutor(g).run({x: np.eye(64) * 0.1}, h))


def _four_products_summed():
    """(graph, input, output): four branches of a 64x64 product each, summed (the network can overlap them)."""
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    branches = [vf.tanh(vf.tanh(x * float(k)) @ x) for k in range(4)]
    out = branches[0]
    for b in branches[1:]:
        out = out + b
    return g, x, out


def test_parallel_branches_are_timed_both_ways_and_decided_within_five_calls():
    g, x, out = _four_products_summed()
    want = vf.SequentialExecutor(g).run({x: np.eye(64)}, out)
    with vf.ActorExecutor(g, threads=2, heavy_flops=0) as act:
        ways = []
        for _ in range(5):  # the profile (tape), the network's warm-up, then network, tape, network
            choice = next(iter(act._choices.values()), None)
            ways.append(choice.next() if choice is not None else "tape")
            np.testing.assert_array_equal(act.run({x: np.eye(64)}, out), want)  # the same bits either way
        choice = next(iter(act._choices.values()))
        assert ways == ["tape", "network", "network", "tape", "network"]
        assert len(choice.times["network"]) == 2 and len(choice.times["tape"]) == 1
        assert choice.mode in ("network", "tape") and choice.reason.startswith("measured: the network took")
        assert "decided at call 5" in choice.reason
        assert act.describe(out).startswith(f"runs as: {choice.mode} (measured")


def test_the_tapes_timed_turn_runs_its_program_and_does_not_compile_it(monkeypatch):
    """The tape's one timed call (the fourth) ran its program's compiling too, which made the tape
    look up to 3x slower than it is and the choice fall to a slower network."""
    import vertexflow.executor as executor_module

    g, x, out = _four_products_summed()
    compiled_at = []
    real = executor_module.compile_program
    with vf.ActorExecutor(g, threads=2, heavy_flops=0) as act:
        def spy(*args, **kwargs):
            choice = next(iter(act._choices.values()), None)
            compiled_at.append(None if choice is None else choice.calls)
            return real(*args, **kwargs)

        monkeypatch.setattr(executor_module, "compile_program", spy)
        for _ in range(5):
            act.run({x: np.eye(64)}, out)
    assert compiled_at == [0]  # once, at the end of the first call (the profile), before any timed call


def test_schedule_is_checked():
    g, feeds, loss = small_mlp()
    with pytest.raises(ValueError, match="schedule= must be one of auto, network, tape"):
        vf.ActorExecutor(g, schedule="fast")
    with pytest.raises(TypeError, match="threads= takes an int, got '2'"):
        vf.ActorExecutor(g, threads="2")


def test_the_async_api_works_under_asyncio_too():
    import asyncio

    g, feeds, loss = small_mlp("float64")
    want = vf.SequentialExecutor(g).run(feeds, loss)

    async def main():
        async with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
            got = await act.arun(feeds, loss)
            value, grads = await act.abackward(feeds, loss)
            streamed = [out async for out in act.stream([feeds] * 3, loss)]
        return got, value, streamed

    got, value, streamed = asyncio.run(main())
    assert got == want and value == want and streamed == [want] * 3


def test_awaiting_outside_any_event_loop_says_what_to_call_instead():
    g, feeds, loss = small_mlp()
    act = vf.ActorExecutor(g)
    coroutine = act.arun(feeds, loss)
    with pytest.raises(vf.AsyncContextError, match="call the blocking form instead"):
        coroutine.send(None)
    act.close()


def _chains(branches=4, depth=5):
    g = vf.Graph()
    x = g.input("x", shape=(64, 256), dtype="float64")
    outs = []
    for b in range(branches):
        h = x * (1.0 + b)
        for _ in range(depth):
            h = vf.tanh(h)
        outs.append(h)
    return g, x, outs


def test_an_actor_on_a_worker_costs_one_hand_off_a_step_not_one_per_member():
    """Four chains of five expensive vertices: four actors, each one hand-off per step (not twenty)."""
    g, x, outs = _chains()
    feeds = {x: np.ones((64, 256))}
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        for _ in range(3):  # past the first call of these shapes (each vertex through the core, measured)
            act.run(feeds, outs)
        workers = [a for a in act._network_plan(outs, None, {}, False, None).actors if a.heavy]
        before = act._pool.handed
        got = act.run(feeds, outs)
        assert act._pool.handed - before == len(workers) == 4
    for value, want in zip(got, vf.SequentialExecutor(g).run(feeds, outs)):
        np.testing.assert_array_equal(value, want)


class Misjudged(vf.ops.Op):
    """An op whose cost estimate is wrong by design: `slow` ones work for milliseconds but say they are
    cheap, the others say they are expensive and take microseconds (on a small input)."""

    name = "misjudged"
    work = np.random.default_rng(1).normal(size=(256, 256))

    def __init__(self, slow: bool):
        self.slow = slow

    def infer(self, x):
        return x

    def forward(self, xp, x):
        if self.slow:
            y = self.work
            for _ in range(20):
                y = xp.tanh(xp.sort(y, axis=None).reshape(y.shape))
            return x * float(y[0, 0] > -2)
        return x + 1.0

    def cost(self, x):
        return 1.0 if self.slow else 1e12

    blocking = False  # it says it never waits: the choice between tape and network is free


@pytest.mark.parametrize("shape", ["slow_branches", "quick_branches", "mixed"])
def test_schedule_network_places_vertices_as_auto_does_after_measuring(shape):
    g = vf.Graph()
    x = g.input("x", shape=(8, 8), dtype="float64")
    kinds = {"slow_branches": [True, True, True], "quick_branches": [False, False, False],
             "mixed": [True, False, True]}[shape]
    outs = [Misjudged(slow)(x * float(k + 1), name=f"branch_{k}") for k, slow in enumerate(kinds)]
    feeds = {x: np.random.default_rng(0).normal(size=(8, 8))}
    plans = {}
    for schedule in ("network", "auto"):
        with vf.ActorExecutor(g, threads=2, schedule=schedule) as act:
            for _ in range(5):
                act.run(feeds, outs)
            plans[schedule] = act.describe(outs).splitlines()[1:]  # the actors, after the header line
            estimated = act._network_plan(outs, None, {}, False, None).describe().splitlines()
    assert plans["network"] == plans["auto"]
    assert plans["network"] != estimated  # the estimates alone would have placed them otherwise


def test_a_worker_takes_on_its_actors_next_segment_when_its_inputs_are_in():
    """A chain whose constants are taken from the inbox along the way: several segments, one hand-off a step
    (the constants came with the step's feeds, so the worker goes from one segment to the next itself)."""
    g = vf.Graph()
    x = g.input("x", shape=(64, 256), dtype="float64")
    h = vf.tanh(x)
    for k in range(3):
        h = vf.tanh(h * (1.0 + k))  # a constant made here: taken mid-chain, it splits the actor's segments
    feeds = {x: np.ones((64, 256))}
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        for _ in range(3):
            act.run(feeds, h)
        plan = act._network_plan([h], None, {}, False, None)
        (actor,) = plan.actors
        assert len(compile_program(actor, plan, workers=True).segments) == 4
        before = act._pool.handed
        got = act.run(feeds, h)
        assert act._pool.handed - before == 1
    np.testing.assert_array_equal(got, vf.SequentialExecutor(g).run(feeds, h))


class Signal(vf.ops.Op):
    """Copies its input and sets an event (after its actor's worker has sent the previous value on)."""

    name = "signal"

    def __init__(self, event: threading.Event):
        self.event = event

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.event.set()
        return x + 0.0

    def cost(self, x):
        return 1e9


class AwaitSignal(Signal):
    """Copies its input once the event is set (within 10 s, else it fails: no hang)."""

    name = "await_signal"

    def forward(self, xp, x):
        if not self.event.wait(timeout=10):
            raise TimeoutError("the signal never came")
        return x + 0.0


def test_a_worker_takes_on_a_join_whose_input_another_worker_sent():
    """Actor A waits (on a worker) until actor B has sent its value and gone on; A's join then has its input
    in and runs on the same worker: two hand-offs a step, not four. By construction, no timing."""
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    sent = threading.Event()
    b1 = vf.tanh(x, name="b1")
    b2 = Signal(sent)(b1, name="b2")  # B goes on after sending b1 to A ...
    a1 = AwaitSignal(sent)(x, name="a1")  # ... which A waits for before its join
    out = vf.add(a1, b1, name="join")
    feeds = {x: np.eye(64)}
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        plan = act._network_plan([out, b2], None, {}, False, None)
        assert [sorted(m.name for m in a.members if m.kind == "op") for a in plan.actors if a.heavy] == [
            ["b1", "b2"], ["a1", "join"]]
        for _ in range(3):
            sent.clear()
            before = act._pool.handed
            got = act.run(feeds, [out, b2], timeout=30)
            handed = act._pool.handed - before
        np.testing.assert_array_equal(got[0], np.eye(64) + np.tanh(np.eye(64)))
        assert handed == 2


def test_a_join_writes_into_its_actors_own_value_from_an_earlier_segment():
    """x -> tanh (actor A) and x -> sigmoid (actor B), summed in A: the sum's segment comes after A waits for
    B's value, and writes into A's tanh in place (made by A, read by nobody else) instead of a new array."""
    from vertexflow.tape import compile_segment

    g = vf.Graph()
    x = g.input("x", shape=(64, 256), dtype="float64")
    left, right = vf.tanh(x, name="left"), vf.sigmoid(x, name="right")
    out = vf.add(left, right, name="out")
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as act:
        plan = act._network_plan([out], None, {}, False, None)
    (owner,) = [a for a in plan.actors if any(m is out for m in a.members)]
    join = compile_program(owner, plan, workers=True).segments[-1]
    assert join.joins and [t.member.name for t in join.takes] == ["out"]
    specs = {n.id: n.spec for n in g.nodes}
    program = compile_segment(join.entries, specs, {}, np, made=join.made)
    mine = left if any(m is left for m in owner.members) else right
    assert f"out=values[{mine.id}]" in program.source


class Gate(vf.ops.Op):
    """Copies its input; at its `at`-th call, first sets `enter` and then waits (10 s at most) for `leave`."""

    name = "gate"

    def __init__(self, cost: float, at: int, enter: threading.Event | None, leave: threading.Event | None):
        self._cost, self.at, self.enter, self.leave = cost, at, enter, leave
        self.calls = 0

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.calls += 1
        if self.calls == self.at:
            if self.enter is not None:
                self.enter.set()
            if self.leave is not None and not self.leave.wait(timeout=10):
                raise TimeoutError(f"{self.name}: never let through")
        return x + 0.0

    def cost(self, x):
        return self._cost


def test_a_result_computed_on_a_worker_reaches_the_caller_while_the_trio_thread_is_busy():
    """Step 0's fetch is computed on a worker while step 1's cheap vertex holds the actors' trio thread until
    the caller has step 0's result: the worker hands the result to the caller itself (through the trio
    thread, this deadlocks and the cheap vertex gives up after 10 s)."""
    g = vf.Graph()
    x = g.input("x", shape=(8,), dtype="float64")
    started, got = threading.Event(), threading.Event()
    # Calls 1-2 wire the network; then step 0 is call 3 and step 1 is call 4.
    slow = Gate(1e9, 3, None, started)(x, name="slow")  # step 0: on a worker, until step 1's vertex holds the loop
    cheap = Gate(1.0, 4, started, got)(x, name="cheap")  # step 1: on the trio thread, until step 0 is the caller's
    feeds = [{x: np.full(8, float(i))} for i in range(2)]
    with vf.ActorExecutor(g, threads=2, schedule="network", depth=2) as act:
        described = act.describe([slow, cheap])
        assert "[heavy] x, slow\n" in described and "[heavy] x, slow, cheap" not in described  # apart
        list(act.run_stream(feeds, [slow, cheap], timeout=30))
        results = []
        for out in act.run_stream(feeds, [slow, cheap], timeout=30):
            results.append(out)
            got.set()
    np.testing.assert_array_equal(results[1][0], np.full(8, 1.0))
    assert [r[0][0] for r in results] == [0.0, 1.0]
