"""Fault injection: a raising, slow, blocking or interrupting vertex anywhere in a random graph, every executor.

Each scenario asserts what a user relies on: no hang (the deadline, and a hard
limit on the whole test), the right error type naming the right vertex, the
next run bitwise equal to the sequential executor's, and no thread of the
executor left once it is closed or collected.
"""

from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vertexflow as vf

pytestmark = pytest.mark.timeout(300)

FAULTS = ["raise", "interrupt", "slow", "block"]
EXECUTORS = {
    "sequential": vf.SequentialExecutor,
    "actor": vf.ActorExecutor,
    "actor-unfused": lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network"),
    "actor-inline": lambda g: vf.ActorExecutor(g, threads=0, schedule="network"),
    "stream": lambda g: vf.StreamExecutor(g, streams=3),
}


class Fault(vf.ops.Op):
    """Identity while disarmed; armed, it raises, interrupts, sleeps past the deadline or blocks."""

    name = "fault"

    def __init__(self, kind: str):
        self.kind = kind
        self.armed = False
        self.finished = False  # an armed slow or blocking call came to its end
        self.release = threading.Event()

    def infer(self, x):
        return x

    def forward(self, xp, x):
        if self.armed:
            if self.kind == "raise":
                raise ArithmeticError("injected")
            if self.kind == "interrupt":
                raise KeyboardInterrupt
            # slow: returns its value once released (or after 2 s); block: waits up to 5 s
            self.release.wait(2 if self.kind == "slow" else 5)
            self.finished = True
        return x + 0.0

    def vjp(self, F, g, xs, y):
        return (g,)


@st.composite
def faulty_graph(draw):
    """A random DAG over (4, 8) float64 values with one Fault vertex at a random place."""
    g = vf.Graph("faulty")
    x = g.input("x", shape=(None, 8), dtype="float64")
    w = g.param("w", value=np.random.default_rng(draw(st.integers(0, 999))).normal(size=(8, 8)) * 0.3)
    nodes = [x, x @ w]
    fault = Fault(draw(st.sampled_from(FAULTS)))
    at = draw(st.integers(0, 5))
    for k in range(6):
        if k == at:
            nodes.append(fault(nodes[draw(st.integers(0, len(nodes) - 1))], name="the_fault"))
            continue
        kind = draw(st.sampled_from(["tanh", "exp", "add", "mul", "matmul"]))
        a, b = (nodes[draw(st.integers(0, len(nodes) - 1))] for _ in range(2))
        nodes.append(_vertex(kind, a, b, w))
    out = nodes[-1] + nodes[at + 2]  # the fault's result and the last vertex both reach the fetch
    loss = vf.sum(out * out)
    feeds = {x: np.random.default_rng(draw(st.integers(0, 999))).normal(size=(4, 8))}
    return g, fault, out, loss, feeds


def _vertex(kind: str, a, b, w):
    if kind == "tanh":
        return vf.tanh(a)
    if kind == "exp":
        return vf.exp(vf.tanh(a))
    if kind == "add":
        return a + b
    if kind == "mul":
        return a * b
    return vf.tanh(a) @ w


def _vf_threads() -> list[threading.Thread]:
    """Threads of executors. The kernels' pool is not one: made once per process with at most a thread
    per core (as BLAS's own), it splits a convolution's images whatever executor runs it."""
    return [t for t in threading.enumerate() if t.name.startswith("vf-") and not t.name.startswith("vf-kernels")]


def _expect(fault: Fault, call) -> None:
    """Run `call` with the fault armed and check how it fails."""
    fault.armed = True
    try:
        if fault.kind == "raise":
            with pytest.raises(vf.VertexError, match="vertex 'the_fault' \\(fault") as info:
                call(None)
            assert isinstance(info.value.__cause__, ArithmeticError)
        elif fault.kind == "interrupt":
            with pytest.raises(KeyboardInterrupt):
                call(None)
        else:
            fault.finished = False
            with pytest.raises(vf.ExecutionTimeout, match="the_fault"):
                call(0.15)
            # by construction: the vertex ends only once released (below), so the timeout came first
            assert not fault.finished
    finally:
        fault.armed = False
        fault.release.set()  # a blocked vertex left on its own thread ends now


MODES = ["run", "backward", "stream", "async"]


# VERTEXFLOW_FAULT_EXAMPLES=600 for a soak run; the suite runs 60.
@settings(max_examples=int(os.environ.get("VERTEXFLOW_FAULT_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=faulty_graph(), executor=st.sampled_from(sorted(EXECUTORS)), mode=st.sampled_from(MODES))
def test_a_fault_anywhere_fails_cleanly_and_the_executor_works_after(case, executor, mode):
    g, fault, out, loss, feeds = case
    reference = vf.SequentialExecutor(g)
    want_out = reference.run(feeds, out)
    want_loss, want_grads = reference.backward(feeds, loss)
    ex = EXECUTORS[executor](g)
    is_actor = isinstance(ex, vf.ActorExecutor)
    if mode == "stream" and not is_actor:
        mode = "run"
    if mode == "async" and not is_actor:
        mode = "backward"
    try:
        if mode == "run":
            _expect(fault, lambda t: ex.run(feeds, out, timeout=t))
        elif mode == "backward":
            _expect(fault, lambda t: ex.backward(feeds, loss, timeout=t))
        elif mode == "stream":
            if fault.kind in ("slow", "block"):  # a stream has no deadline: a cancelled stream is the way out
                fault.armed = True

                async def cancelled():
                    with trio.move_on_after(0.2) as scope:
                        async for _ in ex.stream([feeds] * 4, out):
                            pass
                    return scope.cancelled_caught

                try:
                    assert trio.run(cancelled)
                finally:
                    fault.armed = False
                    fault.release.set()
            else:
                _expect(fault, lambda t: list(ex.run_stream([feeds] * 4, out)))
        else:
            async def call(t):
                return await ex.arun(feeds, out, timeout=t)

            _expect(fault, lambda t: trio.run(call, t))
        fault.release.clear()
        # The next run is the sequential executor's, bit for bit, every way.
        np.testing.assert_array_equal(ex.run(feeds, out), want_out)
        value, grads = ex.backward(feeds, loss)
        np.testing.assert_array_equal(value, want_loss)
        for p, gr in want_grads.items():
            np.testing.assert_array_equal(grads[p], gr)
        if is_actor:
            for got in ex.run_stream([feeds] * 3, out):
                np.testing.assert_array_equal(got, want_out)
    finally:
        fault.release.set()
        ex.close()
    deadline = time.monotonic() + 6
    while _vf_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _vf_threads() == []


def test_executors_dropped_without_close_free_their_threads():
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    out = vf.tanh(x) + vf.exp(x)
    for _ in range(20):
        ex = vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network")
        ex.run({x: np.ones(4)}, out)
        del ex
    gc.collect()
    deadline = time.monotonic() + 6
    while _vf_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _vf_threads() == []


def test_first_calls_from_several_threads_share_one_host_and_one_network():
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    out = vf.tanh(x) + vf.exp(x)
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as ex:
        start = threading.Barrier(4)
        results, errors = [], []

        def first():
            start.wait()
            try:
                results.append(ex.run({x: np.ones(4)}, out))
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=first) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(results) == 4
        assert len(ex._hosts) == 1 and len(ex._hosts[0].networks) == 1

        async def concurrent_first_aruns():
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(ex.arun, {x: np.ones(4)}, out)

        trio.run(concurrent_first_aruns)
        assert len(ex._hosts[0].networks) == 1
    assert _vf_threads() == []


def test_close_from_another_thread_gives_waiting_callers_a_vertexflow_error():
    fault = Fault("block")
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    out = vf.exp(fault(vf.tanh(x), name="the_fault"))
    ex = vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network")
    got = []

    def caller():
        try:
            ex.run({x: np.ones(4)}, out)
        except BaseException as exc:  # what a caller sees is the point
            got.append(exc)

    fault.armed = True
    t = threading.Thread(target=caller)
    t.start()
    time.sleep(0.3)
    ex.close()
    t.join(10)
    fault.release.set()
    assert len(got) == 1 and isinstance(got[0], vf.ExecutorClosed), got
    assert "closed while this step ran" in str(got[0])


def test_ctrl_c_during_run_stream_reaches_the_caller_as_keyboard_interrupt(tmp_path):
    """In a subprocess: SIGINT while a stream runs (workers, and everything on the trio thread)."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "stream.py"
    script.write_text(textwrap.dedent("""
        import sys, threading, time
        import numpy as np
        import vertexflow as vf

        class Slow(vf.ops.Op):
            name = "slow"
            def infer(self, x):
                return x
            def forward(self, xp, x):
                time.sleep(0.3)
                return x

        g = vf.Graph()
        x = g.input("x", shape=(4,), dtype="float64")
        out = vf.exp(Slow()(vf.tanh(x)))
        ex = vf.ActorExecutor(g, threads=int(sys.argv[1]), heavy_flops=0, schedule="network")
        print("ready", flush=True)
        try:
            for _ in ex.run_stream([{x: np.ones(4)}] * 100, out):
                pass
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        print("works after:", ex.run({x: np.ones(4)}, out, timeout=5).shape, flush=True)
        ex.close()
        print("threads:", threading.active_count(), flush=True)
    """))
    for threads in (0, 2):
        proc = subprocess.Popen([sys.executable, str(script), str(threads)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"threads={threads}: Ctrl-C during run_stream hung") from None
        assert out.splitlines() == ["KeyboardInterrupt", "works after: (4,)", "threads: 1"], (threads, out)
