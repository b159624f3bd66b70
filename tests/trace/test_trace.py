"""Tracing: honest spans from every executor, valid Chrome JSON for many runs, summaries, comparisons."""

import collections
import json
import statistics
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow.trace.analysis import critical_path, dependencies, vertex_times

from ..actors.test_actor_executor import random_graph
from ..executors import small_mlp, traced_on_two_threads

NETWORK = dict(threads=2, heavy_flops=0, schedule="network")


def traced(executor_cls, **options):
    g, feeds, loss = small_mlp("float64")
    ex = executor_cls(g, optimize=False, **options)  # every vertex runs (no rewrite joins any)
    with vf.trace() as tracer:
        ex.run(feeds, ["hidden", loss])
        ex.backward(feeds, loss)
    ex.close()
    return g, tracer


@pytest.mark.parametrize("make", [vf.SequentialExecutor, lambda g, **kw: vf.ActorExecutor(g, **NETWORK, **kw)],
                         ids=["sequential", "actor"])
def test_one_span_per_vertex_per_run_step_and_phase(make):
    g, tracer = traced(make)
    forward_ops = sorted(n.name for n in vf.graph.ancestors([g["loss"]]) if n.kind == "op")
    by_run = {}
    for s in tracer.spans:
        by_run.setdefault((s.run, s.step, s.phase), []).append(s.vertex)
    runs = sorted({s.run for s in tracer.spans})
    assert len(runs) == 2 and {s.step for s in tracer.spans} == {0}
    assert sorted(by_run[(runs[0], 0, "forward")]) == forward_ops
    assert sorted(by_run[(runs[1], 0, "forward")]) == forward_ops
    assert sorted(by_run[(runs[1], 0, "backward")]) == sorted(["loss", "logits", "matmul_2", "hidden", "add_1",
                                                              "matmul_1"])
    for s in tracer.spans:
        assert s.ready <= s.start <= s.end and s.acquired <= s.start
        assert s.cpu is not None and s.cpu >= 0
        assert s.op == g[s.vertex].op_name
        assert s.name == (s.vertex if s.phase == "forward" else f"{s.vertex} (backward)")
        if s.phase == "forward":
            assert s.inputs == tuple(i.name for i in g[s.vertex].inputs)
            assert s.shape == tuple(5 if d is None else d for d in g[s.vertex].shape)
            assert s.dtype == str(g[s.vertex].dtype)


def test_actor_spans_name_their_lanes_and_the_network_is_wired_in_sight():
    g, tracer = traced(lambda g, **kw: vf.ActorExecutor(g, **NETWORK, **kw))
    lanes = set(tracer.lanes())
    assert lanes <= {"trio", "vf-worker-0", "vf-worker-1"} and lanes & {"vf-worker-0", "vf-worker-1"}
    assert [e.name for e in tracer.events if e.name != "schedule"] == ["wire network", "wire network"]  # a run's and a backward's
    assert {w.what for w in tracer.waits} >= {"worker"}
    assert tracer.slices
    counters = {}
    for c in tracer.counters:
        counters.setdefault(c.name, []).append(c.value)
    assert set(counters) >= {"steps in flight", "workers queued", "workers busy"}
    assert max(counters["steps in flight"]) == 1 and min(counters["steps in flight"]) == 0  # one step at a time
    assert max(counters["workers queued"]) >= 1 and all(0 <= b <= 2 for b in counters["workers busy"])
    label = tracer.track_label(tracer.spans[0].track)
    assert label.startswith("ActorExecutor threads=2 schedule=network blas=auto")


def test_no_tracer_no_spans():
    g, feeds, loss = small_mlp()
    tracer = vf.Tracer()
    vf.SequentialExecutor(g).run(feeds, loss)
    assert tracer.spans == []
    vf.SequentialExecutor(g, tracer=tracer, optimize=False).run(feeds, loss)
    assert len(tracer.spans) == 6


@pytest.mark.parametrize("make", [vf.SequentialExecutor, lambda g: vf.ActorExecutor(g, **NETWORK)],
                         ids=["sequential", "actor"])
def test_a_rewritten_group_is_one_span_at_its_root_saying_what_ran(make):
    """matmul + bias + relu runs as one product epilogue: one span, at the group's last vertex."""
    g, feeds, loss = small_mlp()
    with vf.trace() as tracer, make(g) as ex:
        ex.run(feeds, loss)
    by_vertex = {s.vertex: s for s in tracer.spans}
    assert "matmul_1" not in by_vertex and "add_1" not in by_vertex
    assert by_vertex["hidden"].fused is not None and "matmul" in by_vertex["hidden"].fused
    assert by_vertex["hidden"].op == "relu"


class Held(vf.ops.Op):
    """A matmul that waits at a barrier until the other branch has asked for BLAS too."""

    name = "held_matmul"
    blas = True

    def __init__(self, barrier):
        self.barrier = barrier

    def infer(self, a, b):
        return vf.Spec((a.shape[0], b.shape[1]), a.dtype)

    def forward(self, xp, a, b):
        return a @ b

    def cost(self, a, b):
        return 1e12


def test_matmuls_that_take_turns_for_blas_do_not_overlap_in_work():
    g = vf.Graph()
    x = g.input("x", shape=(256, 256), dtype="float64")
    left = vf.tanh(x @ x, name="left")
    right = vf.tanh((x * 2.0) @ x, name="right")
    out = left + right
    with vf.ActorExecutor(g, blas="keep", **NETWORK) as act, vf.trace() as tracer:
        for _ in range(5):
            act.run({x: np.eye(256)}, out)
    matmuls = [s for s in tracer.spans if s.op == "matmul"]
    by_step = {}
    for s in matmuls:
        by_step.setdefault(s.run, []).append(s)
    for pair in by_step.values():
        a, b = sorted(pair, key=lambda s: s.start)
        assert a.end <= b.start  # the lock serialises them, and the spans say so
    for w in tracer.waits:
        if w.what == "BLAS lock":
            assert w.lane.startswith("vf-worker")
    summary = tracer.summary()
    assert summary.efficiency <= 1.02 and summary.ideal <= summary.total_work


# -- the Chrome JSON, read the way Perfetto's importer reads it -----------------------------------
def _check_chrome(doc: dict) -> dict:
    """Perfetto's rules: unique thread ids apart from pids, no overlapping complete events on a
    thread, every flow paired, forward in time, and within one run's step."""
    events = doc["traceEvents"]
    pids = {e["pid"] for e in events}
    threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    tids = [t for _, t in threads]
    assert len(tids) == len(set(tids)) and not set(tids) & pids
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert set(names) >= {e["pid"] for e in events if e["ph"] == "X"}
    per_thread = {}
    for e in events:
        if e["ph"] == "X":
            assert (e["pid"], e["tid"]) in threads and e["dur"] >= 0 and e["ts"] >= 0
            per_thread.setdefault((e["pid"], e["tid"]), []).append(e)
    overlapping = 0
    for seq in per_thread.values():
        seq.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in seq:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + 1e-6:
                stack.pop()
            if stack and e["ts"] + e["dur"] > stack[-1]["ts"] + stack[-1]["dur"] + 1e-6:
                overlapping += 1  # neither nested nor after: Perfetto drops it
            stack.append(e)
    assert overlapping == 0

    def enclosing(flow):
        for e in per_thread.get((flow["pid"], flow["tid"]), ()):
            if e["ts"] <= flow["ts"] <= e["ts"] + e["dur"] and e["cat"] in ("forward", "backward"):
                return e
        return None

    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert set(starts) == set(finishes)
    for k, s in starts.items():
        f = finishes[k]
        assert f["ts"] >= s["ts"] and f["bp"] == "e"
        a, b = enclosing(s), enclosing(f)
        assert a is not None and b is not None and a is not b
        assert (a["pid"], a["args"]["run"], a["args"]["step"]) == (b["pid"], b["args"]["run"], b["args"]["step"])
    return {"flows": len(starts), "spans": sum(len(v) for v in per_thread.values()), "processes": names}


@given(case=random_graph())
def test_traces_of_random_graphs_forward_backward_and_streams_are_valid(case, tmp_path_factory):
    g, outputs, loss, params, feeds = case
    path = tmp_path_factory.mktemp("trace") / "t.json"
    with vf.trace() as tracer, vf.ActorExecutor(g, **NETWORK) as act:
        seq = vf.SequentialExecutor(g)
        seq.run(feeds, outputs)
        seq.backward(feeds, loss)
        act.backward(feeds, loss)
        list(act.run_stream([feeds] * 3, outputs))
    tracer.save(str(path))
    found = _check_chrome(json.loads(path.read_text()))
    assert len(found["processes"]) == 2
    # which thread runs which actor is up to the scheduler: a value that went from one lane to
    # another must show as a flow (values on one lane need none: the order there says it)
    lane_of = {(s.track, s.run, s.step, s.vertex): s.lane for s in tracer.spans if s.phase == "forward"}
    crossed = [s.vertex for s in tracer.spans if s.phase == "forward"
               and any(lane_of.get((s.track, s.run, s.step, i), s.lane) != s.lane for i in s.inputs)]
    assert found["flows"] >= (1 if crossed else 0)


def test_two_executors_on_two_threads_under_one_tracer():
    g, feeds, loss = small_mlp("float64")

    def steps(ex):
        for _ in range(3):
            ex.backward(feeds, loss)

    tracer = traced_on_two_threads(g, steps)
    events = {"traceEvents": __import__("vertexflow.trace.chrome", fromlist=["x"]).chrome_events(tracer)}
    found = _check_chrome(events)
    assert sorted(found["processes"].values())[0].startswith("ActorExecutor")
    assert any(v.startswith("SequentialExecutor") for v in found["processes"].values())


def test_a_saved_trace_opens_again(tmp_path):
    g, tracer = traced(lambda g, **kw: vf.ActorExecutor(g, **NETWORK, **kw))
    tracer.save(str(tmp_path / "t.json"))
    again = vf.Tracer.load(str(tmp_path / "t.json"))
    assert len(again.spans) == len(tracer.spans)
    original = sorted((s.vertex, s.phase, s.run, s.lane) for s in tracer.spans)
    assert sorted((s.vertex, s.phase, s.run, s.lane) for s in again.spans) == original
    for a, b in zip(sorted(tracer.spans, key=lambda s: s.start), sorted(again.spans, key=lambda s: s.start)):
        assert abs((a.end - a.start) - (b.end - b.start)) < 2e-6
    assert again.summary().total_work == pytest.approx(tracer.summary().total_work, abs=1e-4)
    again.save_html(str(tmp_path / "again.html"))


def test_summary_bounds_and_critical_path():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    a, b = vf.exp(x, name="a"), vf.tanh(x, name="b")
    out = vf.add(a, b, name="out")
    tracer = vf.Tracer()
    # Hand-made spans: a (2 s) and b (1 s) in parallel on two lanes, then out (1 s).
    for name, lane, start, end in [("a", "w0", 0, 2), ("b", "w1", 0, 1), ("out", "w0", 2, 3)]:
        tracer.record(g[name], "forward", 0, lane, start, start, end, [np.zeros(3)])
    s = tracer.summary(cores=2)
    assert s.wall == 3 and s.total_work == 4
    assert s.critical_path == 3 and [v for v, _ in s.critical_spans] == ["a", "out"]
    assert s.ideal == max(3, 4 / 2) and s.efficiency == 1.0
    assert s.busy == {"w0": 3, "w1": 1}
    assert s.parallelism == pytest.approx(4 / 3)
    times = vertex_times(tracer.spans)
    assert critical_path(times, dependencies(tracer.spans))[0] == 3
    del out


def test_comparing_a_sequential_and_a_concurrent_run_explains_the_time(tmp_path):
    from vertexflow.benchmarks.families import wide

    w = wide(branches=4, depth=3, rows=128, cols=256)
    seq = vf.SequentialExecutor(w.graph)
    with vf.ActorExecutor(w.graph, threads=2, schedule="network") as act:
        for _ in range(2):
            seq.run(w.feeds, w.fetch)
            act.run(w.feeds, w.fetch)
        with vf.trace() as ts:
            for _ in range(3):
                seq.run(w.feeds, w.fetch)
        with vf.trace() as ta:
            for _ in range(3):
                act.run(w.feeds, w.fetch)
    c = ts.compare(ta)
    parts = sum(seconds for _, seconds in c.breakdown())
    assert parts - c.unexplained_s == pytest.approx(c.concurrent_wall_s, rel=1e-6)
    assert 0 < c.efficiency <= 1 and c.ideal_s <= c.sequential_wall_s * 1.05
    assert {v.vertex for v in c.vertices} == {n.name for n in vf.graph.ancestors(w.fetch) if n.kind == "op"}
    text = str(c)
    assert "work inflation" in text and "idle on the critical path" in text
    page = c.save_html(str(tmp_path / "compare.html"))
    with open(page) as f:
        html = f.read()
    assert "Why the concurrent run was or was not faster" in html and '"compare":{' in html


def test_a_trace_block_records_executors_on_every_thread_unless_kept_to_its_own():
    import threading

    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    y = vf.tanh(x, name="y")
    seq = vf.SequentialExecutor(g)

    def serve():  # a server's worker thread running the executor while the block is open
        seq.run({x: np.ones(4)}, y)

    for threads, recorded in (("all", True), ("current", False)):
        with vf.trace(threads=threads) as t:
            worker = threading.Thread(target=serve)
            worker.start()
            worker.join()
        assert bool([s for s in t.spans if s.vertex == "y"]) == recorded
        with vf.trace(threads=threads) as t:
            serve()  # on this thread: recorded either way
        assert [s.vertex for s in t.spans] == ["y"]
    with pytest.raises(ValueError, match='threads=...\\) takes "all" or "current"'):
        with vf.trace(threads="mine"):
            pass


def test_overlapping_trace_blocks_each_get_the_steps_made_while_open():
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    y = vf.exp(x, name="y")
    seq = vf.SequentialExecutor(g)
    outer = vf.trace()
    t_outer = outer.__enter__()
    seq.run({x: np.ones(4)}, y)
    with vf.trace() as t_inner:
        seq.run({x: np.ones(4)}, y)
    outer.__exit__(None, None, None)
    seq.run({x: np.ones(4)}, y)  # after both closed: neither
    assert len(t_outer.spans) == 2 and len(t_inner.spans) == 1
    assert len(t_outer.slices) == 2 and len(t_inner.slices) == 1  # each call's slice, entry to return


def _chain(n=24, size=256):
    g = vf.Graph("chain")
    x = g.input("x", shape=(size, size), dtype="float64")
    h = x
    for k in range(n):
        h = vf.tanh(h) if k % 2 else vf.exp(h * -0.01)
    return g, {x: np.random.default_rng(0).normal(size=(size, size))}, [h]


def _branches(kind, count=4, size=256):
    g = vf.Graph(kind)
    x = g.input("x", shape=(size, size), dtype="float64")
    outs = []
    for b in range(count):
        h = x * (1.0 + 0.1 * b)
        for k in range(4):
            if kind == "matmul":
                h = vf.tanh(h @ x * (1.0 / size))
            else:
                h = vf.tanh(h) if (k + b) % 2 else vf.sigmoid(h)
        outs.append(h)
    return g, {x: np.random.default_rng(1).normal(size=(size, size))}, outs


def _traced_calls(ex, feeds, fetch, calls=6):
    """A trace of `calls` calls after warm-up, and each call's (start, end) timed around it."""
    for _ in range(3):
        ex.run(feeds, fetch)
    windows = []
    with vf.trace() as t:
        for _ in range(calls):
            start = time.perf_counter()
            ex.run(feeds, fetch)
            windows.append((start, time.perf_counter()))
    return t, windows


def _call_walls(tracer, windows) -> list[float]:
    """Each traced call's wall time as the trace records it (its step slice), checked against the clock
    around the call: one slice per call, inside the time around it, enclosing all of the step's spans
    (so the hand-offs to and from the executor's threads are in it). Exact, whatever the machine's load."""
    slices = sorted(tracer.slices, key=lambda sl: sl.start)
    assert len(slices) == len(windows)
    for sl, (start, end) in zip(slices, windows):
        assert start <= sl.start <= sl.end <= end
        members = [s for s in tracer.spans if (s.run, s.step) == (sl.run, sl.step)]
        assert members and sl.start <= min(s.start for s in members) and max(s.end for s in members) <= sl.end
    return [sl.end - sl.start for sl in slices]


@pytest.mark.parametrize("case", ["chain", "chains", "chains_4_threads", "matmuls"])
def test_the_comparison_agrees_with_the_wall_clock_and_never_counts_more_cpu_than_cores(case):
    """The issue's four graphs: the compare speedup is the ratio of the traced calls' wall times (the
    same calls, timed around them), no span's CPU time exceeds its duration, no step has more CPU work
    than its cores could do in its time, and the breakdown adds up to the step."""
    from vertexflow.machine import cores

    g, feeds, fetch = _chain() if case == "chain" else _branches("matmul" if case == "matmuls" else "ufunc")
    threads = 4 if case == "chains_4_threads" else 2
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, threads=threads, schedule="network") as act:
        ts, seq_windows = _traced_calls(seq, feeds, fetch)
        ta, act_windows = _traced_calls(act, feeds, fetch)
    c = ts.compare(ta)
    seq_walls, act_walls = _call_walls(ts, seq_windows), _call_walls(ta, act_windows)
    assert c.speedup == pytest.approx(statistics.median(seq_walls) / statistics.median(act_walls), rel=1e-9)
    for tracer in (ts, ta):
        assert all(s.cpu is not None and s.cpu <= s.duration for s in tracer.spans)
        slices = {(sl.run, sl.step): sl.end - sl.start for sl in tracer.slices}
        cpu = collections.defaultdict(float)
        for s in tracer.spans:
            cpu[(s.run, s.step)] += s.cpu
        for key, used in cpu.items():
            assert used <= cores() * slices[key] * 1.02 + 1e-4
    parts = sum(seconds for _, seconds in c.breakdown())
    assert parts - c.unexplained_s == pytest.approx(c.concurrent_wall_s, rel=1e-9)
    assert 0 < c.efficiency <= 1


def test_the_tape_on_a_chain_is_close_to_its_bound():
    g, feeds, fetch = _chain(size=640)  # vertices of a millisecond: what tracing adds per vertex is small
    t, _ = _traced_calls(vf.SequentialExecutor(g), feeds, fetch)
    assert t.summary().efficiency >= 0.9  # a chain on one thread is optimal by construction


@st.composite
def _random_dag(draw):
    """A random DAG of 4 to 16 elementwise vertices on 128x256 float64 arrays (milliseconds a call)."""
    g = vf.Graph("random")
    x = g.input("x", shape=(128, 256), dtype="float64")
    nodes = [x]
    for _ in range(draw(st.integers(4, 16))):
        a = nodes[draw(st.integers(0, len(nodes) - 1))]
        kind = draw(st.sampled_from(["tanh", "sigmoid", "add", "mul"]))
        if kind in ("add", "mul"):
            b = nodes[draw(st.integers(0, len(nodes) - 1))]
            nodes.append(vf.add(a, b) if kind == "add" else vf.multiply(a, vf.tanh(b)))
        else:
            nodes.append(vf.tanh(a) if kind == "tanh" else vf.sigmoid(a))
    read = {i.id for m in nodes[1:] for i in m.inputs}
    outputs = [n for n in nodes[1:] if n.id not in read]
    return g, outputs, {x: np.random.default_rng(draw(st.integers(0, 99))).normal(size=(128, 256))}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_random_dag())
def test_on_random_graphs_the_comparison_agrees_with_the_wall_clock(case):
    g, outputs, feeds = case
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, threads=2, schedule="network") as act:
        ts, seq_windows = _traced_calls(seq, feeds, outputs, calls=5)
        ta, act_windows = _traced_calls(act, feeds, outputs, calls=5)
    seq_walls, act_walls = _call_walls(ts, seq_windows), _call_walls(ta, act_windows)
    assert ts.compare(ta).speedup == pytest.approx(statistics.median(seq_walls) / statistics.median(act_walls),
                                                   rel=1e-9)
    assert all(s.cpu <= s.duration for s in ta.spans)
