"""RayExecutor against a real local Ray cluster: parity, streams, failures, teardown, one trace."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

import vertexflow as vf  # noqa: E402
from vertexflow.ray import RayExecutor  # noqa: E402

from .actors.test_actor_executor import random_graph  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A real local cluster (2 CPUs, no dashboard), started once for this module and stopped after it."""
    import cloudpickle

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's ops travel by value
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


def _branches(rows=4):
    g = vf.Graph("branches")
    x = g.input("x", (None, 8), "float64")
    rng = np.random.default_rng(0)
    w1, w2 = g.param("w1", value=rng.normal(size=(8, 8))), g.param("w2", value=rng.normal(size=(8, 8)))
    a, b = vf.tanh(x @ w1), vf.sigmoid(x @ w2)
    for _ in range(3):
        a, b = vf.tanh(a @ w1), vf.sigmoid(b @ w2)
    loss = vf.sum(a * b + a, name="loss")
    return g, x, (w1, w2), a, b, loss, {x: rng.normal(size=(rows, 8))}


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_graph(), partitions=st.sampled_from([2, 3]), executor=st.sampled_from(["sequential", "actor"]))
def test_random_graphs_split_two_and_three_ways_match_sequential_bitwise(case, partitions, executor):
    g, outputs, loss, params, feeds = case
    seq = vf.SequentialExecutor(g)
    with RayExecutor(g, partitions=partitions, executor=executor) as ex:
        for want, got in zip(seq.run(feeds, outputs), ex.run(feeds, outputs)):
            np.testing.assert_array_equal(got, want)
        wrt = [g["a"], *params]
        (v_seq, g_seq), (v_ray, g_ray) = seq.backward(feeds, loss, wrt), ex.backward(feeds, loss, wrt)
        np.testing.assert_array_equal(v_ray, v_seq)
        for w in wrt:
            np.testing.assert_array_equal(g_ray[w], g_seq[w], err_msg=w.name)


def test_describe_shows_partitions_and_cut_edges_with_their_bytes():
    g, x, _, a, b, loss, feeds = _branches()
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        text = ex.describe(loss, feeds)
        assert "partition 0:" in text and "partition 1:" in text and "Ray actor pid" in text
        assert "cut edges (" in text and "256 B" in text  # (4, 8) float64 values cross


def test_an_explicit_placement_is_followed_and_a_backward_one_refused():
    g, x, _, a, b, loss, feeds = _branches()
    names = [n.name for n in g.nodes if n.kind == "op"]
    with RayExecutor(g, partitions=2, executor="sequential", placement={loss: 1, a: 0}) as ex:
        np.testing.assert_array_equal(ex.run(feeds, loss), vf.SequentialExecutor(g).run(feeds, loss))
        assert "partition 1: 1 vertices" in ex.describe(loss, feeds) or "loss" in ex.describe(loss, feeds)
    with pytest.raises(vf.GraphError, match="partition numbers must follow the data"):
        RayExecutor(g, partitions=2, placement={names[0]: 1, loss: 0}).run(feeds, loss)


def test_a_stream_keeps_input_order_and_a_param_change_takes_effect_at_the_next_step():
    g, x, (w1, w2), a, b, loss, feeds = _branches()
    rng = np.random.default_rng(3)
    batches = [{x: rng.normal(size=(4, 8))} for _ in range(12)]
    seq = vf.SequentialExecutor(g)
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        got = list(ex.run_stream(batches, [loss, b], depth=3))
        for feeds_k, values in zip(batches, got):
            for want, value in zip(seq.run(feeds_k, [loss, b]), values):
                np.testing.assert_array_equal(value, want)
        old = w2.value
        before = seq.run(batches[0], loss)
        stream = ex.run_stream(batches, loss, depth=1, chunk=1)  # a call per step: the change lands between
        first = next(stream)
        w2.value = old * 0.5  # an optimizer's assignment, between steps
        rest = list(stream)
        np.testing.assert_array_equal(first, before)
        for feeds_k, value in zip(batches[1:], rest):
            np.testing.assert_array_equal(value, seq.run(feeds_k, loss))
        w2.value = old


class Raise(vf.ops.Op):
    name = "raise_here"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        raise ArithmeticError("this vertex always fails")


def test_a_raising_vertex_names_itself_and_its_partition_with_the_cause_chained():
    g, x, _, a, b, loss, feeds = _branches()
    bad = Raise()(b, name="bad")
    out = vf.sum(bad)
    with RayExecutor(g, partitions=2, executor="sequential", placement={bad: 1}) as ex:
        with pytest.raises(vf.VertexError, match=r"bad.*\[in partition 1 \(pid \d+ on node") as info:
            ex.run(feeds, out)
        assert info.value.vertex == "bad"
        assert isinstance(info.value.__cause__, vf.VertexError)
        assert isinstance(info.value.__cause__.__cause__, ArithmeticError)
        np.testing.assert_array_equal(ex.run(feeds, loss), vf.SequentialExecutor(g).run(feeds, loss))  # still works


def test_a_partition_killed_mid_stream_raises_partition_lost_and_the_next_run_works():
    g, x, _, a, b, loss, feeds = _branches()
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        want = vf.SequentialExecutor(g).run(feeds, loss)
        stream = ex.run_stream([feeds] * 40, loss, depth=2, chunk=1)
        assert np.array_equal(next(stream), want)
        ray.kill(ex._workers[1], no_restart=True)
        with pytest.raises(vf.PartitionLost, match=r"partition 1 .* died") as info:
            list(stream)
        assert info.value.partitions == (1,)
        np.testing.assert_array_equal(ex.run(feeds, loss), want)


class SleepAway(vf.ops.Op):
    """Identity that sleeps 30 s in any process but the one that built it (so only in a partition)."""

    name = "sleep_away"

    def __init__(self):
        self.home = os.getpid()

    def infer(self, x):
        return x

    def forward(self, xp, x):
        if os.getpid() != self.home:
            time.sleep(30)
        return x


def test_a_timeout_fires_stops_the_partitions_and_the_next_run_works():
    g, x, _, a, b, loss, feeds = _branches()
    slow = vf.sum(SleepAway()(a, name="slow"))
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        # placed and warmed first: starting a partition's process on a loaded machine can take
        # longer than the 1 s deadline below, which would then fire while placing, not in `slow`
        ex.run(feeds, loss, timeout=120)
        # the vertex sleeps 30 s in its partition: the call can only raise by the deadline firing
        with pytest.raises(vf.ExecutionTimeout, match=r"did not finish within 1.0 s \(slow waits for running its op "
                                                      r"sleep_away to return \(partition .*\); the partitions were "
                                                      r"stopped") as info:
            ex.run(feeds, slow, timeout=1.0)
        assert list(info.value.waiting) == ["slow"]  # named by the partition that runs it
        np.testing.assert_array_equal(ex.run(feeds, loss, timeout=60), vf.SequentialExecutor(g).run(feeds, loss))


def test_a_vertex_stuck_while_measuring_times_out_too():
    g, x, _, a, b, loss, feeds = _branches()
    stuck = vf.sum(Rendezvous("/nonexistent-folder-vf", "me", "never")(a, name="stuck"))
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        with pytest.raises((vf.ExecutionTimeout, vf.VertexError)):
            ex.run(feeds, stuck, timeout=1.0)


def test_close_kills_every_partition_actor():
    g, x, _, a, b, loss, feeds = _branches()
    ex = RayExecutor(g, partitions=2, executor="sequential")
    ex.run(feeds, loss)
    workers = list(ex._workers)
    assert all(w is not None for w in workers)
    ex.close()
    for worker in workers:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.info.remote(), timeout=30)
    with pytest.raises(vf.ExecutorClosed):
        ex.run(feeds, loss)


class Rendezvous(vf.ops.Op):
    """Identity that announces itself in a folder and waits (up to 60 s) for `other` to do the same."""

    name = "rendezvous"

    def __init__(self, folder, me, other):
        self.folder, self.me, self.other = folder, me, other

    def infer(self, x):
        return x

    def forward(self, xp, x):
        open(os.path.join(self.folder, self.me), "w").close()
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(self.folder, self.other)):
            if time.time() > deadline:
                raise TimeoutError(f"{self.other} never ran while {self.me} was running")
            time.sleep(0.01)
        return x


def test_two_branches_in_two_partitions_run_at_the_same_time(tmp_path):
    """Proven by construction: each branch waits until the other has started, in another process."""
    g = vf.Graph("meet")
    x = g.input("x", (2, 2), "float64")
    left = Rendezvous(str(tmp_path), "left", "right")(vf.tanh(x), name="left")
    right = Rendezvous(str(tmp_path), "right", "left")(vf.sigmoid(x), name="right")
    out = left + right
    with RayExecutor(g, partitions=2, executor="sequential", placement={left: 0, right: 1, out: 1}) as ex:
        value = ex.run({x: np.ones((2, 2))}, out, timeout=120)
    np.testing.assert_array_equal(value, np.tanh(np.ones((2, 2))) + 1 / (1 + np.exp(-np.ones((2, 2)))))


def test_one_trace_holds_every_partitions_spans_on_aligned_clocks():
    g, x, _, a, b, loss, feeds = _branches()
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        ex.run(feeds, loss)
        start = time.perf_counter()
        with vf.trace() as tracer:
            ex.run(feeds, loss)
            ex.backward(feeds, loss)
        end = time.perf_counter()
    labels = {tracer.track_label(s.track) for s in tracer.spans}
    assert len(labels) == 2 and all("RayExecutor partition" in label for label in labels)
    assert {s.phase for s in tracer.spans} == {"forward", "backward"}
    assert {s.vertex for s in tracer.spans if s.phase == "forward"} >= {n.name for n in g.nodes if n.kind == "op"}
    assert all(start - 0.05 <= s.start <= s.end <= end + 0.05 for s in tracer.spans)  # on the driver's clock
    assert any(e.lane == "transfers" and e.args["bytes"] > 0 for e in tracer.events)
    # as complete as a local trace: each partition's step slices, its executors' waits and counters,
    # the wait for the producing partition apart from the bytes moving, flows across partitions
    tracks = {s.track for s in tracer.spans}
    assert {sl.track for sl in tracer.slices} == tracks
    producer = [w for w in tracer.waits if w.what == "producer"]
    assert producer and all(w.lane is None and w.end >= w.start for w in producer)
    for w in producer:  # the bytes move after the wait, not during it
        moves = [e for e in tracer.events if e.lane == "transfers" and e.track == w.track and e.start >= w.end - 1e-6]
        assert moves
    path = tracer.save(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ray-trace-{os.getpid()}.json"))
    assert os.path.getsize(path) > 0
    from vertexflow.trace.chrome import chrome_events

    events = chrome_events(tracer)
    pid_of_flow = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            pid_of_flow.setdefault(e["id"], set()).add(e["pid"])
    assert any(len(pids) == 2 for pids in pid_of_flow.values())  # a value from one partition to the other


def test_importing_vertexflow_never_imports_ray():
    import subprocess

    code = "import vertexflow, vertexflow.ray, sys; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_stream_chunks_carry_about_40_ms_of_work_and_a_known_stream_fills_the_pipeline(monkeypatch):
    """Steps per call: CHUNK_WORK seconds of the busiest partition's measured work (1 to 64), and at most
    a quarter of a stream whose length is known, so that the second partition starts early."""
    from vertexflow.ray import executor as ray_executor

    g, x, params, a, b, loss, feeds = _branches()
    with RayExecutor(g, partitions=2) as ex:
        list(ex.run_stream([feeds] * 2, loss))  # measures the partitions' work
        calls = []
        submit = ex._submit
        monkeypatch.setattr(ex, "_submit", lambda call, group, *rest, **kw: calls.append(len(group)) or
                            submit(call, group, *rest, **kw))
        call = next(iter(ex._calls.values()))
        busiest = max(sum(call.costs.get(n.id, 0.0) for n in part) for part in call.partitioning.parts)
        unbounded = min(64, max(1, round(ray_executor.CHUNK_WORK / busiest)))
        assert unbounded > 3  # these vertices take microseconds: many steps would go in one call
        got = list(ex.run_stream([feeds] * 12, loss))  # a list: its length is known
        assert calls == [3, 3, 3, 3]  # a quarter of the stream each, not `unbounded`
        calls.clear()
        got_iter = list(ex.run_stream((feeds for _ in range(12)), loss))  # a generator: length unknown
        assert calls == [min(unbounded, 12 - k) for k in range(0, 12, unbounded)]
    want = vf.SequentialExecutor(g).run(feeds, loss)
    assert all(np.array_equal(v, want) for v in got + got_iter)


def test_fetching_only_inputs_and_params_gives_copies_as_every_executor_does():
    g, x, (w, _), a, b, loss, feeds = _branches()
    with RayExecutor(g, partitions=2, executor="sequential") as ex:
        got_x, got_w = ex.run(feeds, [x, w])
        np.testing.assert_array_equal(got_x, vf.SequentialExecutor(g).run(feeds, x))
        got_w += 1.0  # the caller's: the param is untouched
        np.testing.assert_array_equal(ex.run(feeds, w), vf.SequentialExecutor(g).run(feeds, w))
