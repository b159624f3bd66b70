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
from vertexflow.errors import ModelFileError
from vertexflow.ops.shape import Identity

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
    """Threads of executors. The kernels' team (or pool) is not one: made once per process with a thread
    per core at most (as BLAS's own), it runs kernels' splits whatever executor runs them."""
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


# -- what a caller gets is the caller's own -------------------------------------------------------------
ALIAS_EXECUTORS = {
    **EXECUTORS,
    "actor-tape": lambda g: vf.ActorExecutor(g, schedule="tape"),
    "stream-fused": lambda g: vf.StreamExecutor(g, fuse=True),
    "sequential-fused": lambda g: vf.SequentialExecutor(g, fuse=True),
}


def _fetch_kinds():
    """Every kind of fetch a result could alias: the fed input, a param, a constant, views of them
    (reshape, transpose, a slice), an identity, and a computed value."""
    g = vf.Graph("alias")
    x = g.input("x", shape=(3, 4), dtype="float64")
    w = g.param("w", value=np.arange(12.0).reshape(3, 4))
    c = g.const(np.full((3, 4), 2.0), name="c")
    fetch = [x, w, c, vf.reshape(x, (4, 3)), vf.transpose(w), w[1:], Identity()(w), x * 1.0 + w]
    loss = vf.sum(fetch[-1] * w)
    return g, x, w, c, fetch, loss


@pytest.mark.parametrize("executor", sorted(ALIAS_EXECUTORS))
@pytest.mark.parametrize("mode", ["run", "backward", "stream", "arun"])
def test_writing_into_any_result_never_changes_a_feed_a_param_or_a_later_run(executor, mode):
    g, x, w, c, fetch, loss = _fetch_kinds()
    feed = np.random.default_rng(0).normal(size=(3, 4))
    kept_feed, kept_w, kept_c = feed.copy(), w.value.copy(), c.value.copy()
    want = vf.SequentialExecutor(g).run({x: feed}, fetch)
    ex = ALIAS_EXECUTORS[executor](g)
    try:
        for _ in range(2):
            if mode == "run":
                results = ex.run({x: feed}, fetch, timeout=30)
            elif mode == "backward":
                value, grads, results = ex.backward({x: feed}, loss, [x, w], fetch=fetch, timeout=30)
                results = [value, *results, *grads.values()]
            elif mode == "stream":
                results = [r for step in ex.run_stream([{x: feed}] * 2, fetch, timeout=30) for r in step]
            else:
                async def call():
                    with trio.fail_after(30):
                        return await ex.arun({x: feed}, fetch) if hasattr(ex, "arun") else ex.run({x: feed}, fetch)

                results = trio.run(call)
            for r in results:
                np.asarray(r)[...] = -123.0  # the caller writes into everything it got
            assert np.array_equal(feed, kept_feed) and np.array_equal(w.value, kept_w)
            assert np.array_equal(c.value, kept_c)
        for got, expected in zip(ex.run({x: feed}, fetch, timeout=30), want):
            np.testing.assert_array_equal(got, expected)
    finally:
        ex.close()


class PassesItsInput(vf.ops.Op):
    """A rule of a user's own that returns its input's array as the gradient (no vjp_fresh)."""

    name = "passes_its_input"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x * 1.0

    def vjp(self, F, g, xs, y):
        return (xs[0],)


@pytest.mark.parametrize("executor", ["sequential", "actor-tape"])
def test_a_gradient_a_rule_hands_back_as_a_params_array_is_still_the_callers_own(executor):
    g = vf.Graph()
    w = g.param("w", value=np.arange(6.0).reshape(2, 3))
    loss = vf.sum(PassesItsInput()(w) * 2.0)  # the product's rule is fresh, the one below it is not
    kept = w.value.copy()
    ex = ALIAS_EXECUTORS[executor](g)
    try:
        for _ in range(3):  # the first call vertex by vertex, then compiled
            _, grads = ex.backward({}, loss)
            np.testing.assert_array_equal(grads[w], kept)
            grads[w][...] = -1.0
            np.testing.assert_array_equal(w.value, kept)
    finally:
        ex.close()


# -- nothing left running ------------------------------------------------------------------------------
@pytest.mark.parametrize("executor", sorted(ALIAS_EXECUTORS))
@pytest.mark.parametrize("mode", ["run", "run-timeout", "backward-timeout", "stream-timeout"])
def test_an_executor_dropped_after_any_call_leaves_no_thread(executor, mode):
    g, x, w, c, fetch, loss = _fetch_kinds()
    feeds = {x: np.ones((3, 4))}
    for _ in range(5):
        ex = ALIAS_EXECUTORS[executor](g)
        if mode == "run":
            ex.run(feeds, fetch)
        elif mode == "run-timeout":
            ex.run(feeds, fetch, timeout=30)
        elif mode == "backward-timeout":
            ex.backward(feeds, loss, [w], timeout=30)
        else:
            list(ex.run_stream([feeds] * 2, fetch, timeout=30))
        del ex
    gc.collect()
    deadline = time.monotonic() + 6
    while _vf_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _vf_threads() == []


# -- cancelled, then working again --------------------------------------------------------------------
class Stuck(vf.ops.Op):
    """Blocks its thread until released (a vertex stuck in a call that never returns)."""

    name = "stuck"

    def __init__(self):
        self.release = threading.Event()

    def infer(self, x):
        return x

    def forward(self, xp, x):
        self.release.wait(20)
        return x + 1.0


class Liar(vf.ops.Op):
    """Declares its input's spec; returns one row fewer (shape) or float32 (dtype)."""

    name = "liar"

    def __init__(self, lie):
        self.lie = lie

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x[1:] if self.lie == "shape" else x.astype(np.float32)

    def vjp(self, F, g, xs, y):
        return (g,)


@pytest.mark.parametrize("executor", sorted(ALIAS_EXECUTORS))
@pytest.mark.parametrize("lie", ["shape", "dtype"])
def test_an_op_returning_other_than_it_declared_is_named_on_every_executor_and_call(executor, lie):
    g = vf.Graph("liar")
    x = g.input("x", shape=(None, 3), dtype="float64")
    w = g.param("w", value=np.ones((3, 3)))
    y = vf.tanh(Liar(lie)(x @ w, name="the_liar") + 1.0)
    loss = vf.sum(y)
    feeds = {x: np.ones((4, 3))}
    declared = r"but the op's infer declared \(4, 3\) float64"
    with ALIAS_EXECUTORS[executor](g) as ex:
        calls = [lambda: ex.run(feeds, y), lambda: ex.backward(feeds, loss, [w]),
                 lambda: list(ex.run_stream([feeds] * 3, y))]
        for call in calls * 2:  # the first call of each kind and the next (compiled, cached) one
            with pytest.raises(vf.VertexError, match=r"vertex 'the_liar' \(liar.*returned an array of "
                                                     rf"\(\d, 3\) float\d\d, {declared}") as info:
                call()
            assert info.value.vertex == "the_liar"


class HeldGradient(vf.ops.Op):
    """x * 2, whose derivative waits (at most 30 s) until `release` is set."""

    name = "held_gradient"

    def __init__(self):
        self.release = threading.Event()

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x * 2

    def vjp(self, F, g, xs, y):
        self.release.wait(30)
        return (F.mul(g, 2.0),)


@pytest.mark.parametrize("executor", sorted(ALIAS_EXECUTORS))
def test_a_backward_timeout_names_the_vertex_whose_derivative_is_running(executor):
    """Past ten vertices, with derivatives already done after it in the order and more to come."""
    g = vf.Graph("held")
    x = g.input("x", shape=(3,), dtype="float64")
    h = x
    for k in range(15):
        h = vf.tanh(h, name=f"before{k}")
    held = HeldGradient()
    h = held(h, name="the_held_one")
    for k in range(5):
        h = vf.exp(h * 0.1, name=f"after{k}")
    loss = vf.sum(h, name="loss")
    with ALIAS_EXECUTORS[executor](g) as ex:
        try:
            with pytest.raises(vf.ExecutionTimeout, match=r"\(the_held_one waits for running the derivative of "
                                                          r"held_gradient to return") as info:
                ex.backward({x: np.ones(3)}, loss, [x], timeout=0.3)
            assert next(iter(info.value.waiting)) == "the_held_one"
            assert not any(name.startswith("after") for name in info.value.waiting)  # their derivatives ran
        finally:
            held.release.set()
        value, grads = ex.backward({x: np.ones(3)}, loss, [x], timeout=30)  # works again
    want_value, want_grads = vf.SequentialExecutor(g).backward({x: np.ones(3)}, loss, [x])
    assert value == want_value and np.array_equal(grads[x], want_grads[x])


@pytest.mark.parametrize("placement", ["inline", "workers"])
@pytest.mark.parametrize("form", ["arun", "abackward", "stream"])
def test_a_cancel_scope_around_any_async_form_leaves_the_executor_working(placement, form):
    """threads=0 runs the stuck vertex on the host's own thread: the next call must not queue behind it."""
    g = vf.Graph()
    x = g.input("x", shape=(3,), dtype="float64")
    op = Stuck()
    stuck = vf.sum(op(x, name="stuck_vertex") * x)
    fine = vf.sum(vf.tanh(x), name="fine")
    threads = 0 if placement == "inline" else 2
    ex = vf.ActorExecutor(g, threads=threads, heavy_flops=0, schedule="network")

    async def main():
        with trio.move_on_after(0.3) as scope:
            if form == "arun":
                await ex.arun({x: np.ones(3)}, stuck)
            elif form == "abackward":
                await ex.abackward({x: np.ones(3)}, stuck, [x])
            else:
                async for _ in ex.stream([{x: np.ones(3)}] * 3, stuck):
                    pass
        assert scope.cancelled_caught
        with trio.fail_after(20):
            return await ex.arun({x: np.ones(3)}, fine, timeout=10)

    try:
        assert trio.run(main) == pytest.approx(3 * np.tanh(1.0))
        assert ex.run({x: np.ones(3)}, fine, timeout=10) == pytest.approx(3 * np.tanh(1.0))
    finally:
        op.release.set()
        ex.close()


# -- hostile files ---------------------------------------------------------------------------------------
def _npy_bytes(shape, dtype, payload: bytes) -> bytes:
    """A .npy member whose header declares `shape` of `dtype` but that holds `payload` (maybe far less)."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue() + payload


def _model():
    g = vf.Graph("hostile")
    w = g.param("w", value=np.ones((4, 3), np.float32))
    b = g.param("b", value=np.zeros(3, np.float32))
    return g, [w, b]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(
    st.sampled_from(["param/w", "param/b", "param/zz", "optim/w/momentum", "optim/steps", "junk", "param/w.txt"]),
    st.lists(st.sampled_from([0, 1, 3, 4, 10**6, 10**9]), max_size=3),
    st.sampled_from(["float32", "float64", "int64", "complex64", "bool", "object"]),
    st.sampled_from([0, 16, 4096]), st.booleans()), max_size=4))
def test_hostile_npz_files_are_refused_as_model_file_errors_before_allocating(tmp_path_factory, entries):
    import tracemalloc
    import warnings
    import zipfile

    path = tmp_path_factory.mktemp("npz") / "hostile.npz"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # duplicate member names are part of what a hostile file may hold
        for name, shape, dtype, payload, suffix in entries:
            member = name + (".npy" if suffix else "")
            if dtype == "object":
                archive.writestr(member, _npy_bytes(shape, "float64", b"\x00" * payload).replace(b"<f8", b"|O", 1))
            else:
                archive.writestr(member, _npy_bytes(shape, dtype, b"\x00" * payload))
    g, params = _model()
    before = [p.value.copy() for p in params]
    tracemalloc.start()
    try:
        vf.nn.load(str(path), params)
    except ModelFileError as exc:
        assert str(path) in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * 2**20  # a file of a few kilobytes never costs more than the model's own params
    for p, value in zip(params, before):
        loaded = p.value
        assert loaded.shape == value.shape and loaded.dtype == value.dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=64), declared=st.integers(0, 2**40), corrupt=st.booleans())
def test_hostile_safetensors_files_are_refused_as_model_file_errors(tmp_path_factory, header, declared, corrupt):
    import json
    import struct

    path = tmp_path_factory.mktemp("st") / "hostile.safetensors"
    if corrupt:
        body = header
    else:
        meta = {"param/w": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, declared]}}
        text = json.dumps(meta).encode()
        body = struct.pack("<Q", len(text)) + text + header
    path.write_bytes(body)
    g, params = _model()
    with pytest.raises(ModelFileError, match=str(path).replace("/", "\\/").replace(".", "\\.")):
        vf.nn.load(str(path), params)
    assert np.array_equal(params[0].value, np.ones((4, 3), np.float32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["ConstantOfShape", "Range", "Tile", "external"]),
       size=st.sampled_from([1, 10, 10**5, 10**12]),
       location=st.sampled_from(["data.bin", "../outside.bin", "/etc/passwd", "nul\x00here", "missing.bin"]),
       offset=st.integers(-5, 100), length=st.integers(-5, 100))
def test_hostile_onnx_files_are_refused_naming_their_node_or_tensor(tmp_path_factory, kind, size, location, offset,
                                                                   length):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from vertexflow import onnx as vf_onnx

    folder = tmp_path_factory.mktemp("onnx")
    (folder / "data.bin").write_bytes(b"\x00" * 48)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits, nodes = [], []
    if kind == "ConstantOfShape":
        inits.append(numpy_helper.from_array(np.array([size, size], np.int64), "shape"))
        nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["y"], name="filler"))
    elif kind == "Range":
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0, "s"), (size, "l"), (1, "d"))]
        nodes.append(helper.make_node("Range", ["s", "l", "d"], ["y"], name="counter"))
    elif kind == "Tile":
        inits += [numpy_helper.from_array(np.ones((1, 1), np.int64), "one"),  # not trainable: folded at load
                  numpy_helper.from_array(np.array([size, size], np.int64), "reps")]
        nodes.append(helper.make_node("Tile", ["one", "reps"], ["y"], name="tiler"))
    else:
        tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        inits.append(tensor)
        nodes.append(helper.make_node("Relu", ["w"], ["y"], name="relu"))
    model = helper.make_model(helper.make_graph(nodes, "hostile", [], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    try:
        loaded = vf_onnx.load(str(path), max_constant_bytes=2**20)
    except vf_onnx.UnsupportedOnnxError:
        return
    except ModelFileError as exc:
        named = {"ConstantOfShape": "filler", "Range": "counter", "Tile": "tiler", "external": "'w'"}[kind]
        assert named in str(exc) and str(path) in str(exc)
        return
    loaded.close()
    # what loads is small enough, and reads only inside the model's folder
    assert kind != "external" or (location == "data.bin" and 0 <= offset and offset + max(length, 0) <= 48)
    if kind != "external":
        assert size * size * 8 <= 2**20 or kind == "Range" and size * 4 <= 2**20


@pytest.mark.parametrize("make", [
    lambda g: vf.SequentialExecutor(g),
    lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network"),
    lambda g: vf.ActorExecutor(g, threads=0),
    lambda g: vf.StreamExecutor(g, streams=2),
], ids=["sequential", "actor-network", "actor-inline", "stream"])
def test_a_closed_local_executor_runs_again_and_closes_again(make):
    """As the README says: close() stops the threads; the next call starts what it needs again."""
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    w = g.param("w", value=np.arange(4.0))
    loss = vf.sum(vf.tanh(x * w) + vf.exp(x))
    feeds = {x: np.linspace(0, 1, 4)}
    want = vf.SequentialExecutor(g).backward(feeds, loss)
    ex = make(g)
    ex.backward(feeds, loss, timeout=30)
    ex.close()
    assert _vf_threads() == []
    np.testing.assert_array_equal(ex.run(feeds, loss, timeout=30), want[0])
    got = ex.backward(feeds, loss, timeout=30)
    np.testing.assert_array_equal(got[1][w], want[1][w])
    ex.close()
    assert _vf_threads() == []
