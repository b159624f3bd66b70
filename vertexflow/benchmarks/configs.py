"""The configurations a benchmark compares: vertexflow's executors, and the peers a user would pick instead.

Each configuration becomes a *runner*: one unit of the workload (a step, a
training step, the whole stream) as a function returning its outputs as a
flat list of arrays, so results can be compared before anything is timed.

vertexflow's own: "sequential" (the tape), "actor" (the actor executor as a
user gets it: it decides between the network and the tape), "actor-network"
(the network always), "actor-N" (N worker threads), "stream" (emulated
streams), "sequential-fused" and "actor-fused" (with fuse=True: elementwise
groups compiled, where that measures faster), "ray" and "ray-N" (RayExecutor with 2 or N
partitions, each a Ray actor process; a local cluster of the machine's cores). Peers: "numpy"
(the workload written by hand, where it exists; a family may add others, like "trio-by-hand"), "dask-sync" and "dask-threaded" (Dask's
schedulers on the same op functions), "dask-distributed" (the same on a Dask LocalCluster of 2
worker processes; asked for by name), "onnxruntime" and "onnxruntime-parallel" (ORT_SEQUENTIAL
and ORT_PARALLEL, for an ONNX workload).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..errors import BenchmarkError
from ..executor import SequentialExecutor
from ..graph import ancestors
from ..machine import cores
from ..ops.base import is_async
from .workload import Workload

VERTEXFLOW = ("sequential", "actor", "actor-network", "stream", "sequential-fused", "actor-fused", "ray")
PEERS = ("numpy", "dask-sync", "dask-threaded", "dask-distributed", "onnxruntime", "onnxruntime-parallel")


@dataclass
class Runner:
    """One unit of a workload in one configuration: `unit()` returns its outputs, flat."""

    unit: Callable[[], list]
    close: Callable[[], None] = lambda: None
    executor: Any = None  # the vertexflow executor behind it, if any

    def choice(self) -> str | None:
        """What an actor executor decided for it (the network or one actor, and why)."""
        choices = getattr(self.executor, "_choices", None)
        if not choices:
            return None
        choice = next(iter(choices.values()))
        return f"{choice.mode or 'deciding'}: {choice.reason}"


@dataclass(frozen=True)
class Config:
    """One way of running a workload.

    Attributes:
        name: as reports show it.
        exact: its results must equal the sequential executor's bit for bit (vertexflow's
            executors); peers agree to rounding.
    """

    name: str
    exact: bool


def known(name: str) -> bool:
    return name in VERTEXFLOW or name in PEERS or re.fullmatch(r"(actor|ray)-\d+", name) is not None


def configs(names: Sequence[str], workload: Workload, peers: bool = True) -> list[Config]:
    """The configurations to compare: `names` (sequential first), plus the peers that fit the workload.

    Raises:
        BenchmarkError: an unknown executor name.
    """
    for name in names:
        if isinstance(name, str) and name in workload.by_hand:
            continue  # a peer this workload has written by hand
        if not isinstance(name, str) or not known(name):
            raise BenchmarkError(f"unknown executor {name!r}; use {', '.join(VERTEXFLOW)}, actor-N (N worker "
                                 f"threads) or a peer ({', '.join(PEERS)})")
    chosen = ["sequential", *[n for n in names if n != "sequential"]]
    if peers:
        for peer in applicable_peers(workload):
            if peer == "dask-distributed" and "dask-distributed" not in names:
                continue  # a cluster of its own: only when asked for (the distributed suite asks)
            if peer not in chosen:
                chosen.append(peer)
    # Fused kernels round differently from numpy's passes: they agree with the rest to rounding.
    return [Config(n, exact=n not in PEERS and n not in workload.by_hand and not n.endswith("fused"))
            for n in chosen]


def applicable_peers(workload: Workload) -> list[str]:
    """The peers that can run this workload here (their packages installed)."""
    out = []
    if workload.numpy is not None:
        out.append("numpy")
    out += list(workload.by_hand)
    if workload.mode == "run" and _importable("dask"):
        out += ["dask-sync", "dask-threaded"]
    if _importable("distributed"):
        out.append("dask-distributed")
    if workload.onnx_path is not None and workload.mode != "backward" and _importable("onnxruntime"):
        out += ["onnxruntime", "onnxruntime-parallel"]
    return out


def missing_peers(workload: Workload) -> list[str]:
    """The peers that would run this workload but are left out because their package is missing, as
    warnings naming the install line (a report never drops a row without saying so)."""
    out = []
    if workload.mode == "run" and not _importable("dask"):
        out.append("dask-sync and dask-threaded are left out: dask is not installed "
                   "(pip install dask, or pip install -e '.[bench]')")
    if workload.onnx_path is not None and workload.mode != "backward" and not _importable("onnxruntime"):
        out.append("onnxruntime and onnxruntime-parallel are left out: onnxruntime is not installed "
                   "(pip install onnxruntime)")
    return out


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def flatten(result: Any) -> list[np.ndarray]:
    """A unit's outputs as a flat list of arrays (a backward's loss, then its gradients by name)."""
    if isinstance(result, tuple) and len(result) >= 2 and isinstance(result[1], dict):
        value, grads = result[0], result[1]
        return [np.asarray(value), *(np.asarray(grads[k]) for k in sorted(grads, key=lambda n: n.name))]
    if isinstance(result, list):
        out = []
        for item in result:
            out += flatten(item)
        return out
    return [np.asarray(result)]


def runner(config: Config, workload: Workload, threads: int | None = None) -> Runner:
    """The runner of a configuration on a workload."""
    threads = threads or cores()
    name = config.name
    if name in ("sequential", "sequential-fused"):
        return _executor_unit(workload, SequentialExecutor(workload.graph, fuse=name.endswith("fused")))
    if name == "actor-fused":
        from ..actors import ActorExecutor

        return _executor_unit(workload, ActorExecutor(workload.graph, threads=threads, fuse=True))
    if name == "actor" or name == "actor-network" or re.fullmatch(r"actor-\d+", name):
        from ..actors import ActorExecutor

        n = int(name.split("-")[1]) if re.fullmatch(r"actor-\d+", name) else threads
        schedule = "network" if name == "actor-network" else "auto"
        return _executor_unit(workload, ActorExecutor(workload.graph, threads=n, schedule=schedule))
    if name == "stream":
        from ..streams import StreamExecutor

        return _executor_unit(workload, StreamExecutor(workload.graph, streams=threads))
    if name in workload.by_hand:
        by_hand = workload.by_hand[name]
        return Runner(lambda: flatten(by_hand()))
    if name == "numpy":
        if workload.numpy is None:
            raise BenchmarkError(f"{workload.name} has no hand-written numpy version")
        return Runner(lambda: flatten(workload.numpy()))
    if name == "ray" or re.fullmatch(r"ray-\d+", name):
        from ..ray import RayExecutor

        partitions = int(name.split("-")[1]) if "-" in name else 2
        return _executor_unit(workload, RayExecutor(workload.graph, partitions=partitions))
    if name == "dask-distributed":
        return _dask_distributed_unit(workload)
    if name.startswith("dask"):
        return _dask_unit(workload, threads, threaded=name == "dask-threaded")
    if name.startswith("onnxruntime"):
        return Runner(_onnxruntime_unit(workload, parallel=name.endswith("parallel"), threads=threads))
    raise BenchmarkError(f"unknown executor {name!r}")


def _executor_unit(workload: Workload, executor) -> Runner:
    if workload.mode == "backward":
        unit = lambda: flatten(executor.backward(workload.feeds, workload.loss))  # noqa: E731
    elif workload.mode == "stream" and hasattr(executor, "run_stream"):
        unit = lambda: flatten(list(executor.run_stream(workload.batches, workload.fetch)))  # noqa: E731
    elif workload.mode == "stream":
        unit = lambda: flatten([executor.run(b, workload.fetch) for b in workload.batches])  # noqa: E731
    else:
        unit = lambda: flatten(executor.run(workload.feeds, workload.fetch))  # noqa: E731
    return Runner(unit, executor.close, executor)


def _dask_unit(workload: Workload, threads: int, threaded: bool) -> Runner:
    from concurrent.futures import ThreadPoolExecutor

    import dask.local
    import dask.threaded

    dsk, keys = _dask_graph(workload, workload.feeds)
    if threaded:
        # A pool of its own: dask's cached default pool does not survive a fork.
        pool = ThreadPoolExecutor(threads)
        return Runner(lambda: flatten(list(dask.threaded.get(dsk, keys, pool=pool))), pool.shutdown)
    return Runner(lambda: flatten(list(dask.local.get_sync(dsk, keys))))


def _dask_graph(workload: Workload, feeds) -> tuple[dict, list[str]]:
    feeds = {(k if isinstance(k, str) else k.name): v for k, v in feeds.items()}
    dsk: dict[str, Any] = {}
    for node in ancestors(workload.fetch):
        if node.kind == "input":
            dsk[node.name] = feeds[node.name]
        elif node.kind in ("param", "const"):
            dsk[node.name] = node.value
        else:
            dsk[node.name] = (partial(_dask_call, node.op), *(i.name for i in node.inputs))
    return dsk, [n.name for n in workload.fetch]


def _dask_distributed_unit(workload: Workload) -> Runner:
    """The workload's op functions on a Dask LocalCluster of 2 worker processes (one thread each);
    a stream submits every step's graph at once, as Dask users pipeline."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    batches = workload.batches if workload.mode == "stream" else [workload.feeds]
    graphs = []
    for k, feeds in enumerate(batches):
        dsk, keys = _dask_graph(workload, feeds)
        graphs.append(({f"{name}-{k}": _renamed(task, k, dsk) for name, task in dsk.items()},
                       [f"{key}-{k}" for key in keys]))

    def unit():
        merged, keys = {}, []
        for dsk, step_keys in graphs:
            merged.update(dsk)
            keys.append(step_keys)
        results = client.get(merged, keys)
        return flatten([list(r) for r in results] if workload.mode == "stream" else list(results[0]))

    def close():
        client.close()
        cluster.close()

    return Runner(unit, close)


def _renamed(task, k: int, dsk: dict):
    """A task of step k: its references to other keys get the step's suffix."""
    if isinstance(task, tuple) and task and callable(task[0]):
        return (task[0], *(f"{a}-{k}" if isinstance(a, str) and a in dsk else a for a in task[1:]))
    return task


def _dask_call(op, *args):
    with np.errstate(all="ignore"):
        if is_async(op):  # Dask's tasks are functions: each awaits in a trio loop of its own thread
            import trio

            return trio.run(partial(op.forward, np, *args))
        return op.forward(np, *args)


def _onnxruntime_unit(workload: Workload, parallel: bool, threads: int) -> Callable[[], list]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = threads
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(workload.onnx_path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {(k if isinstance(k, str) else k.name): np.asarray(v) for k, v in workload.feeds.items()}
    return lambda: flatten(session.run(names, feeds))
