"""Tracing: spans from both executors, the Chrome trace format's rules, the analysis."""

import json

import numpy as np
import pytest

import vertexflow as vf
from vertexflow.trace.analysis import critical_path, dependencies, vertex_times

from ..executors import small_mlp


def traced(executor_cls, **options):
    g, feeds, loss = small_mlp("float64")
    ex = executor_cls(g, **options)
    with vf.trace() as tracer:
        ex.run(feeds, ["hidden", loss])
        ex.backward(feeds, loss)
    ex.close()
    return g, tracer


@pytest.mark.parametrize("make", [vf.SequentialExecutor, lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network")],
                         ids=["sequential", "actor"])
def test_one_span_per_vertex_per_step_and_phase(make):
    g, tracer = traced(make)
    forward_ops = [n.name for n in vf.graph.ancestors([g["loss"]]) if n.kind == "op"]
    by_step = {}
    for s in tracer.spans:
        by_step.setdefault((s.step, s.phase), []).append(s.vertex)
    steps = sorted({s.step for s in tracer.spans})
    assert len(steps) == 2
    assert sorted(by_step[(steps[0], "forward")]) == sorted(forward_ops)
    assert sorted(by_step[(steps[1], "forward")]) == sorted(forward_ops)
    backward = sorted(by_step[(steps[1], "backward")])
    assert backward == sorted(["loss", "logits", "matmul_2", "hidden", "add_1", "matmul_1"])
    for s in tracer.spans:
        assert s.ready <= s.start <= s.end
        assert s.op == g[s.vertex].op_name
        if s.phase == "forward":
            assert s.inputs == tuple(i.name for i in g[s.vertex].inputs)
            assert s.input_shapes == tuple(
                tuple(5 if d is None else d for d in i.shape) for i in g[s.vertex].inputs
            )


def test_actor_spans_name_their_lanes():
    g, tracer = traced(lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network"))
    lanes = set(tracer.lanes())
    assert lanes <= {"trio", "vf-worker-0", "vf-worker-1"}
    assert lanes & {"vf-worker-0", "vf-worker-1"}


def test_no_tracer_no_spans():
    g, feeds, loss = small_mlp()
    tracer = vf.Tracer()
    vf.SequentialExecutor(g).run(feeds, loss)
    assert tracer.spans == []
    vf.SequentialExecutor(g, tracer=tracer).run(feeds, loss)
    assert len(tracer.spans) == 6


def test_chrome_trace_follows_the_format(tmp_path):
    g, tracer = traced(lambda g: vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network"))
    path = tracer.save(str(tmp_path / "trace.json"))
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(tracer.spans)
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(names.values()) == set(tracer.lanes())
    for e in complete:
        assert isinstance(e["name"], str) and isinstance(e["cat"], str)
        assert isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float))
        assert e["dur"] >= 0 and e["ts"] >= 0
        assert e["pid"] == 1 and e["tid"] in names
        assert {"vertex", "op", "phase", "step", "input_shapes"} <= set(e["args"])
    per_lane = {}
    for e in complete:
        per_lane.setdefault(e["tid"], []).append(e["ts"])
    for ts in per_lane.values():
        assert ts == sorted(ts)  # monotonic per lane
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts and set(starts) == set(finishes)  # every flow is paired
    for k, s in starts.items():
        f = finishes[k]
        assert f["bp"] == "e" and f["ts"] >= s["ts"]
        assert s["cat"] == f["cat"] == "edge"


def test_summary_bounds_and_critical_path():
    g = vf.Graph()
    x = g.input("x", shape=(3,))
    a, b = vf.exp(x, name="a"), vf.tanh(x, name="b")
    out = vf.add(a, b, name="out")
    tracer = vf.Tracer()
    # Hand-made spans: a (2 s) and b (1 s) in parallel on two lanes, then out (1 s).
    for name, lane, start, end in [("a", "w0", 0, 2), ("b", "w1", 0, 1), ("out", "w0", 2, 3)]:
        tracer.record(g[name], "forward", 0, lane, start, start, end, [np.zeros(3)])
    s = tracer.summary()
    assert s.wall == 3 and s.total_work == 4
    assert s.critical_path == 3 and [v for v, _ in s.critical_spans] == ["a", "out"]
    assert s.ideal == max(3, 4 / 2)
    assert s.busy == {"w0": 3, "w1": 1}
    assert s.parallelism == pytest.approx(4 / 3)
    times = vertex_times(tracer.spans)
    assert critical_path(times, dependencies(tracer.spans))[0] == 3
    del out
