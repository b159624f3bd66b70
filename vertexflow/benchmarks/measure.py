"""Measure executors on a workload, in one run, so that machine noise hits them alike.

Each *runner* does one unit of the workload (a step, a training step, or the
whole stream of batches). After warm-up, the runners take turns for `repeat`
rounds of a few runs each; each gets its median and spread, its speedup over the sequential
executor, and its efficiency against the ideal bound max(critical path,
total work / cores), where per-vertex times come from a traced sequential run.
"""

from __future__ import annotations

import gc
import statistics
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

import vertexflow as vf
from vertexflow.machine import blas_threads, cores
from vertexflow.trace import summarize

from .families import Workload
from .timing import Spread, interleaved


@dataclass
class Measurement:
    workload: str
    family: str
    params: dict[str, Any]
    mode: str
    executor: str
    vertices: int
    times_s: list[float]
    median_s: float
    q1_s: float
    q3_s: float
    speedup: float | None = None  # sequential median / this median
    ideal_s: float | None = None
    efficiency: float | None = None  # ideal / median
    overhead_per_vertex_us: float | None = None  # (median - traced work) / vertices
    peak_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _unit(workload: Workload, executor) -> Callable[[], Any]:
    """One unit of the workload on an executor."""
    if workload.mode == "backward":
        return partial(executor.backward, workload.feeds, workload.loss)
    if workload.mode == "stream":
        if isinstance(executor, vf.ActorExecutor):
            return lambda: list(executor.run_stream(workload.batches, workload.fetch))
        return lambda: [executor.run(b, workload.fetch) for b in workload.batches]
    return partial(executor.run, workload.feeds, workload.fetch)


def dask_graph(workload: Workload) -> tuple[dict, list[str]]:
    """The workload's graph as a dask task graph over the same op functions."""
    nodes = vf.graph.ancestors(workload.fetch)
    feeds = {(k if isinstance(k, str) else k.name): v for k, v in workload.feeds.items()}
    dsk: dict[str, Any] = {}
    for node in nodes:
        if node.kind == "input":
            dsk[node.name] = feeds[node.name]
        elif node.kind in ("param", "const"):
            dsk[node.name] = node.value
        else:
            dsk[node.name] = (partial(node.op.forward, np), *(i.name for i in node.inputs))
    return dsk, [n.name for n in workload.fetch]


def runners(
    workload: Workload, threads: list[int], with_dask: bool = True, blas_share: bool = False
) -> dict[str, tuple[Callable, Callable]]:
    """{name: (one unit of work, cleanup)} for every executor that can run this workload."""
    out: dict[str, tuple[Callable, Callable]] = {}
    if workload.numpy is not None:
        out["numpy"] = (workload.numpy, lambda: None)
    seq = vf.SequentialExecutor(workload.graph)
    out["sequential"] = (_unit(workload, seq), lambda: None)
    one = _unit(workload, seq)

    def sequential_one_blas_thread():
        with blas_threads(1):
            return one()

    out["sequential-blas1"] = (sequential_one_blas_thread, lambda: None)
    for n in threads:
        act = vf.ActorExecutor(workload.graph, threads=n)
        out[f"actor-{n}"] = (_unit(workload, act), act.close)
    if blas_share and max(threads) > 1:
        act = vf.ActorExecutor(workload.graph, threads=max(threads), blas="share")
        out[f"actor-{max(threads)}-blas-share"] = (_unit(workload, act), act.close)
    if with_dask and workload.mode == "run":
        try:
            import dask.local
            import dask.threaded
        except ImportError:
            pass
        else:
            dsk, keys = dask_graph(workload)
            workers = max(threads)
            out["dask-sync"] = (lambda: list(dask.local.get_sync(dsk, keys)), lambda: None)
            out[f"dask-threaded-{workers}"] = (
                lambda: list(dask.threaded.get(dsk, keys, num_workers=workers)), lambda: None)
    return out


def traced_work(workload: Workload, lanes: int) -> tuple[float, float, float]:
    """(total work, critical path, ideal bound) of one unit, from a traced sequential run."""
    seq = vf.SequentialExecutor(workload.graph)
    feeds = workload.batches[0] if workload.mode == "stream" else workload.feeds
    run = (partial(seq.backward, feeds, workload.loss) if workload.mode == "backward"
           else partial(seq.run, feeds, workload.fetch))
    run()  # warm-up
    summaries = []
    # One BLAS thread: the work of each vertex on one core, so that work / cores is a true bound.
    with blas_threads(1):
        for _ in range(3):
            with vf.trace() as tracer:
                run()
            summaries.append(summarize(tracer, cores=lanes))
    work = statistics.median(s.total_work for s in summaries)
    path = statistics.median(s.critical_path for s in summaries)
    if workload.mode == "stream":
        batches = len(workload.batches)
        return work * batches, path, max(path, work * batches / lanes)
    return work, path, max(path, work / lanes)


def peak_memory(fn: Callable) -> int:
    """Peak bytes allocated (numpy included) while fn runs."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(
    workload: Workload,
    threads: list[int] | None = None,
    repeat: int = 5,
    warmup: int = 1,
    inner: int = 3,
    with_dask: bool = True,
    blas_share: bool = False,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Time every runner on `workload`, taking turns round by round."""
    threads = threads or [cores()]
    lanes = cores()
    work, path, ideal = traced_work(workload, lanes)
    table = runners(workload, threads, with_dask, blas_share)
    try:
        outputs = {}
        for name, (fn, _) in table.items():
            for _ in range(warmup):
                outputs[name] = fn()
        _check_agreement(workload, outputs)
        results = interleaved({name: fn for name, (fn, _) in table.items()}, repeat, inner,
                              after_round=(lambda _: progress(workload.name)) if progress else None)
        peaks = {name: peak_memory(fn) for name, (fn, _) in table.items()} if memory else {}
    finally:
        for _, cleanup in table.values():
            cleanup()
    seq_median = statistics.median(results["sequential"])
    vertices = workload.vertices
    out = []
    for name, times in results.items():
        spread = Spread.of(times)
        median = spread.median
        out.append(
            Measurement(
                workload=workload.name,
                family=workload.family,
                params=workload.params,
                mode=workload.mode,
                executor=name,
                vertices=vertices,
                times_s=times,
                median_s=median,
                q1_s=spread.q1,
                q3_s=spread.q3,
                speedup=seq_median / median,
                ideal_s=ideal,
                efficiency=ideal / median,
                overhead_per_vertex_us=(median - work) / max(vertices, 1) * 1e6,
                peak_bytes=peaks.get(name),
                extra={"critical_path_s": path, "total_work_s": work, "cores": lanes},
            )
        )
    return out


def _check_agreement(workload: Workload, outputs: dict[str, Any]) -> None:
    """Executors must agree bit for bit; the hand-written and dask versions to rounding."""
    reference = outputs["sequential"]
    for name, out in outputs.items():
        # Same BLAS settings, same bits (executors are interchangeable); other thread counts round differently.
        exact = name.startswith("actor") and not name.endswith("blas-share")
        _assert_same(reference, out, name, exact=exact)


def _assert_same(reference, out, name: str, exact: bool) -> None:
    if isinstance(reference, tuple):  # backward: (loss, {param: grad})
        _assert_same(reference[0], out[0], name, exact)
        for key in reference[1]:
            _assert_same(reference[1][key], out[1][key], name, exact)
        return
    if isinstance(reference, list) or isinstance(out, list):
        ref = reference if isinstance(reference, list) else [reference]
        got = out if isinstance(out, list) else [out]
        if len(ref) == len(got):
            for r, o in zip(ref, got):
                _assert_same(r, o, name, exact)
            return
        got = got[0] if len(got) == 1 else got
        ref = ref[0] if len(ref) == 1 else ref
        return _assert_same(ref, got, name, exact)
    if exact:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(reference), err_msg=f"{name} differs")
    else:
        np.testing.assert_allclose(np.asarray(out), np.asarray(reference), rtol=1e-5, atol=1e-6, err_msg=f"{name} differs")
