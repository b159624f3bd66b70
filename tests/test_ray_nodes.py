"""A lost Ray node: a real cluster of two nodes on this machine (ray.cluster_utils.Cluster), with
partitions on both, and the worker node removed mid-stream or during a backward pass."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

import vertexflow as vf  # noqa: E402
from vertexflow.ray import RayExecutor  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def two_nodes():
    """A head node and a worker node of 2 CPUs each, started for real; the driver joins the head."""
    import cloudpickle
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a cluster left by another module: this test needs its own
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's ops travel by value
        yield cluster, cluster.head_node.node_id, worker
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        cluster.shutdown()


def _spread():
    """Two bundles of one CPU each, on different nodes while there are two; Ray places the bundles of
    a lost node again wherever there is room (SPREAD is a preference, not a rule)."""
    from ray.util.placement_group import placement_group

    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    ray.get(group.ready(), timeout=120)
    return group


class HeldOnNode(vf.ops.Op):
    """Identity whose gradient, on the Ray node `node` only, announces itself in `folder` and waits
    (at most 60 s) for the node to go away."""

    name = "held_on_node"

    def __init__(self, node: str, folder: str):
        self.node, self.folder = node, folder

    def infer(self, x):
        return x

    def forward(self, xp, x):
        return x

    def vjp(self, F, g, xs, y):
        if ray.is_initialized() and ray.get_runtime_context().get_node_id() == self.node:
            open(os.path.join(self.folder, "held"), "w").close()
            time.sleep(60)
            raise TimeoutError("the node holding this vertex was never removed")
        return (g,)


def _model(held=None):
    g = vf.Graph("two nodes")
    x = g.input("x", (None, 8), "float64")
    rng = np.random.default_rng(0)
    w1, w2 = g.param("w1", value=rng.normal(size=(8, 8))), g.param("w2", value=rng.normal(size=(8, 8)))
    a = vf.tanh(x @ w1, name="a")
    if held is not None:
        a = held(a, name="held_a")
    b = vf.sigmoid(a @ w2, name="b")
    if held is not None:
        b = held(b, name="held_b")
    loss = vf.sum(a * b + b, name="loss")
    placement = {a: 0, b: 1, loss: 1}
    if held is not None:
        placement.update({g["held_a"]: 0, g["held_b"]: 1})
    return g, loss, (w1, w2), {x: rng.normal(size=(4, 8))}, placement


def test_a_node_removed_mid_stream_loses_its_partition_which_is_placed_again_on_the_survivor(two_nodes):
    cluster, head, worker = two_nodes
    g, loss, _, feeds, placement = _model()
    want = vf.SequentialExecutor(g).run(feeds, loss)
    with RayExecutor(g, partitions=2, executor="sequential", placement=placement,
                     placement_group=_spread()) as ex:
        stream = ex.run_stream([feeds] * 40, loss, depth=2, chunk=1, timeout=120)
        assert np.array_equal(next(stream), want)
        nodes = ex.nodes()
        assert sorted(nodes) == sorted([head, worker.node_id])  # one partition on each node
        lost = nodes.index(worker.node_id)
        cluster.remove_node(worker)
        with pytest.raises(vf.PartitionLost, match=rf"partition {lost} \(pid \d+ on node {worker.node_id[:8]} at "
                                                   rf"[^)]+\) of 2 died while running stream steps \d+-\d+; its node "
                                                   rf"{worker.node_id[:8]} left the cluster; it will be placed "
                                                   r"again at the next call") as info:
            list(stream)
        assert info.value.partitions == (lost,)
        assert info.value.nodes == (worker.node_id,)
        got = ex.run(feeds, loss, timeout=120)
        assert ex.nodes() == [head, head]  # placed again where there is room
        np.testing.assert_array_equal(got, want)  # bitwise the tape's
        assert all(np.array_equal(v, want) for v in ex.run_stream([feeds] * 4, loss, timeout=120))


def test_a_node_removed_during_backward_loses_its_partition_and_the_next_backward_is_the_tapes(two_nodes, tmp_path):
    cluster, head, worker = two_nodes
    g, loss, params, feeds, placement = _model(HeldOnNode(worker.node_id, str(tmp_path)))
    want = vf.SequentialExecutor(g).backward(feeds, loss, list(params))
    with RayExecutor(g, partitions=2, executor="sequential", placement=placement,
                     placement_group=_spread()) as ex:
        np.testing.assert_array_equal(ex.run(feeds, loss, timeout=120), want[0])  # forward passes everywhere
        lost = ex.nodes().index(worker.node_id)
        removed = threading.Event()

        def remove_when_held():
            deadline = time.monotonic() + 120
            while not (tmp_path / "held").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            cluster.remove_node(worker)  # the partition on it is inside its gradient now
            removed.set()

        remover = threading.Thread(target=remove_when_held, daemon=True)
        remover.start()
        with pytest.raises(vf.PartitionLost, match=rf"partition {lost} \(pid \d+ on node {worker.node_id[:8]} .*"
                                                   rf"its node {worker.node_id[:8]} left the cluster") as info:
            ex.backward(feeds, loss, list(params), timeout=120)
        remover.join(timeout=60)
        assert removed.is_set() and info.value.partitions == (lost,) and info.value.nodes == (worker.node_id,)
        value, grads = ex.backward(feeds, loss, list(params), timeout=120)
        assert ex.nodes() == [head, head]
        np.testing.assert_array_equal(value, want[0])
        assert grads.keys() == want[1].keys()
        for w in params:
            np.testing.assert_array_equal(grads[w], want[1][w])
