"""Stream planning and its event logic, on the CPU; the cupy path where a device exists."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vertexflow as vf
from vertexflow.gpu import plan_streams

from ..actors.test_actor_executor import random_graph


def _check_plan(plan, streams):
    assert set(plan.stream.values()) <= set(range(streams))
    for chain in plan.chains:  # a chain never hops streams
        assert len({plan.stream[v.id] for v in chain}) == 1
        for a, b in zip(chain, chain[1:]):
            assert any(i is a for i in b.inputs)
    for producer, consumer in plan.cross_edges():  # every cross-stream edge is covered by an event
        event = plan.record[producer.id]
        assert event in plan.waits[consumer.id]
    position = {v.id: i for i, v in enumerate(plan.order)}
    for v in plan.order:  # launch order is topological
        assert all(position[i.id] < position[v.id] for i in v.inputs if i.kind == "op")


@given(case=random_graph(), streams=st.integers(1, 4))
def test_random_plans_cover_every_cross_stream_edge_and_are_deterministic(case, streams):
    g, outputs, loss, params, feeds = case
    plan = plan_streams(outputs + [loss], streams)
    _check_plan(plan, streams)
    again = plan_streams(outputs + [loss], streams)
    assert again.stream == plan.stream and again.record == plan.record and again.waits == plan.waits


def _branches(k, depth=3):
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    tails = []
    for b in range(k):
        h = x * float(b + 1)
        for _ in range(depth):
            h = vf.tanh(h)
        tails.append(h)
    out = tails[0]
    for t in tails[1:]:
        out = out + t
    return g, x, tails, out


@pytest.mark.parametrize("streams", [2, 3, 4])
def test_independent_branches_never_share_a_stream(streams):
    g, x, tails, out = _branches(streams)
    plan = plan_streams([out], streams)
    branch_streams = [plan.stream[t.id] for t in tails]
    assert len(set(branch_streams)) == streams
    _check_plan(plan, streams)


def test_a_chain_stays_on_one_stream_with_no_events():
    g = vf.Graph()
    h = g.input("x", shape=(3,), dtype="float64")
    for _ in range(10):
        h = vf.exp(vf.tanh(h))
    plan = plan_streams([h], 4)
    assert set(plan.stream.values()) == {0} and plan.record == {} and plan.waits == {}


@given(case=random_graph(), streams=st.integers(1, 3))
def test_emulated_streams_match_the_sequential_executor_bitwise(case, streams):
    g, outputs, loss, params, feeds = case
    want = vf.SequentialExecutor(g).run(feeds, outputs + [loss])
    got = vf.StreamExecutor(g, streams=streams).run(feeds, outputs + [loss])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_emulated_streams_trace_one_lane_per_stream_and_report_failures():
    g, x, tails, out = _branches(3)
    ex = vf.StreamExecutor(g, streams=3)
    with vf.trace() as tracer:
        ex.run({x: np.ones(4)}, out)
    assert tracer.lanes() == ["stream-0", "stream-1", "stream-2"]
    assert len(tracer.spans) == len(ex.plan(out).order)

    class Boom(vf.ops.Op):
        name = "boom"

        def infer(self, a):
            return a

        def forward(self, xp, a):
            raise ValueError("no")

    bad = vf.exp(Boom()(tails[1], name="bad"))
    with pytest.raises(vf.VertexError, match="vertex 'bad' .*ValueError: no"):
        vf.StreamExecutor(g, streams=3).run({x: np.ones(4)}, [bad, out])


@pytest.mark.parametrize("make", [vf.SequentialExecutor, vf.ActorExecutor, vf.StreamExecutor])
def test_cuda_without_a_device_is_refused_clearly(make):
    if _device_present():
        pytest.skip("a CUDA device is present")
    g, x, tails, out = _branches(2)
    with pytest.raises(vf.DeviceError, match="device='cuda'"):
        make(g, device="cuda")


def _device_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _device_present(), reason="no CUDA device (or cupy) on this machine")
@pytest.mark.parametrize("make", [
    lambda g: vf.SequentialExecutor(g, device="cuda"),
    lambda g: vf.StreamExecutor(g, streams=3, device="cuda"),
    lambda g: vf.ActorExecutor(g, device="cuda"),
])
def test_cuda_parity_with_the_cpu(make):
    g, x, tails, out = _branches(3)
    feeds = {x: np.linspace(-1, 1, 4)}
    want = vf.SequentialExecutor(g).run(feeds, out)
    ex = make(g)
    np.testing.assert_allclose(ex.run(feeds, out), want, rtol=1e-12)
    ex.close()


@given(case=random_graph(), streams=st.integers(1, 3))
def test_actors_on_emulated_cuda_launch_in_event_order_and_match_bitwise(case, streams):
    g, outputs, loss, params, feeds = case
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, device="emulated-cuda", streams=streams) as act:
        for a, b in zip(act.run(feeds, outputs + [loss]), seq.run(feeds, outputs + [loss])):
            np.testing.assert_array_equal(a, b)
        (va, ga), (vs, gs) = act.backward(feeds, loss), seq.backward(feeds, loss)
        np.testing.assert_array_equal(va, vs)
        for p in gs:
            np.testing.assert_array_equal(ga[p], gs[p])


def test_actors_on_emulated_cuda_trace_one_lane_per_stream():
    g, x, tails, out = _branches(3)
    with vf.ActorExecutor(g, device="emulated-cuda", streams=3) as act, vf.trace() as tracer:
        act.run({x: np.ones(4)}, out)
    assert tracer.lanes() == ["cuda-stream-0", "cuda-stream-1", "cuda-stream-2"]
    assert len(tracer.spans) == len(plan_streams([out], 3).order)


def test_a_wait_for_an_unrecorded_event_is_caught():
    from vertexflow.gpu import CheckedStreams

    streams = CheckedStreams(2, 1)
    with pytest.raises(vf.DeviceError, match="waits for event 0, which no producer has recorded"):
        streams.launch(1, lambda: None, waits=[0])
    streams.launch(0, lambda: None, record=0)
    streams.launch(1, lambda: None, waits=[0])
    streams.synchronize()
    streams.launch(1, lambda: None, waits=[0])  # a synchronized event stays recorded
    streams.release(0)  # the step is done: its events go to a later step
    with pytest.raises(vf.DeviceError):
        streams.launch(1, lambda: None, waits=[0])


@st.composite
def sized_branches(draw):
    """Two to four matmul branches of a size up to 512x512, joined: the shape of the bug at 256x512."""
    rows, cols = draw(st.sampled_from([8, 64, 256])), draw(st.sampled_from([8, 128, 512]))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    g = vf.Graph("sized")
    x = g.input("x", shape=(None, cols), dtype="float64")
    params, tails = [], []
    for k in range(draw(st.integers(2, 4))):
        w = g.param(f"w{k}", value=rng.normal(size=(cols, cols)) * cols**-0.5)
        params.append(w)
        h = x @ w
        tails.append(draw(st.sampled_from([vf.tanh, vf.sigmoid, vf.relu]))(h))
    out = tails[0]
    for t in tails[1:]:
        out = out + t
    loss = vf.mean(out * out)
    batches = [{x: rng.normal(size=(rows, cols))} for _ in range(3)]
    return g, out, loss, batches


@settings(max_examples=12, deadline=None)
@given(case=sized_branches(), streams=st.integers(2, 3))
def test_emulated_cuda_at_every_size_matches_the_cpu_in_run_backward_and_streams(case, streams):
    g, out, loss, batches = case
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, device="emulated-cuda", streams=streams) as act:
        np.testing.assert_array_equal(act.run(batches[0], out), seq.run(batches[0], out))
        (va, ga), (vs, gs) = act.backward(batches[0], loss), seq.backward(batches[0], loss)
        np.testing.assert_array_equal(va, vs)
        for p in gs:
            np.testing.assert_array_equal(ga[p], gs[p])
        for got, feeds in zip(act.run_stream(batches, out), batches):
            np.testing.assert_array_equal(got, seq.run(feeds, out))
