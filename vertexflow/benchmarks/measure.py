"""`vf.benchmark`: executors timed on one workload in fresh processes, interleaved, reported honestly.

How a benchmark goes:

1. The workload is built (a graph in memory, a function in a script, an
   ONNX file, a graph family) and every configuration runs it once, here:
   their results must agree (vertexflow's executors bit for bit, peers to
   rounding) before anything is timed.
2. The machine is checked for load: the load average, and the spread of a
   short calibration loop. A busy machine makes the report say so.
3. One process measures the lower bound on the tape (`child.measure_bound`):
   max(critical path, total work at one BLAS thread / cores).
4. `processes` rounds: in each, every configuration runs in a process of its
   own (warm-up, then `runs` timed units), the order rotating from round to
   round. A process's allocator and cache state moves figures by 30-50%
   here, so no two configurations share one. A workload with a recipe gets
   fresh interpreters; a graph built in memory, forked ones.
5. The report (report.py): medians, spreads, confidence intervals,
   speedups, efficiency against the bound, peak memory, warnings and advice.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BenchmarkError
from ..graph import Graph
from ..machine import blas_info, blas_threads, cores, vector_extensions
from .configs import Config, configs, missing_peers, runner
from .report import Report, Result
from .workload import Workload, from_graph, from_onnx, from_script, parse_target


def benchmark(
    target: Graph | Workload | str,
    feeds: Mapping | None = None,
    fetch=None,
    *,
    mode: str = "run",
    loss=None,
    batches: Sequence[Mapping] | None = None,
    executors: Sequence[str] = ("sequential", "actor"),
    peers: bool = True,
    threads: int | None = None,
    processes: int = 3,
    runs: int = 5,
    warmup: int | None = None,
    inputs: Mapping[str, str] | None = None,
    batch: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Time sequential against concurrent execution (and the peers a user would pick instead) on one workload.

    Args:
        target: a vf.Graph (with feeds and fetch), a Workload, a "script.py:function" whose
            function returns (graph, feeds, fetch[, loss]), or an ".onnx" file.
        mode: "run" (one step), "backward" (forward and backward from `loss`), or "stream"
            (the `batches` one after another; pipelined by the actor executor).
        executors: vertexflow's configurations: "sequential", "actor", "actor-network",
            "actor-N" (N worker threads), "stream".
        peers: also time what fits the workload: numpy by hand, Dask's schedulers (one
            step), onnxruntime sequential and parallel (an ONNX file).
        processes: fresh processes per configuration (the rounds).
        runs: timed units in each process, after the warm-up.
        inputs, batch: for an ONNX file, {input: file.npy}, and the size of open dimensions.
        progress: called with a line for each process started.

    Returns:
        a Report: print it for a table; `.save(path)` writes its JSON.

    Raises:
        BenchmarkError: a target that does not build, an unknown executor, bad counts, or
            configurations whose results differ.
    """
    for name, value, low in (("processes", processes, 1), ("runs", runs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise BenchmarkError(f"vf.benchmark: {name}= must be an int >= {low}, got {value!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise BenchmarkError(f"vf.benchmark: threads= must be an int >= 1, got {threads!r}")
    workload = resolve(target, feeds, fetch, mode=mode, loss=loss, batches=batches, inputs=inputs, batch=batch)
    cfgs = configs(list(executors), workload, peers)
    threads = threads or cores()
    say = progress or (lambda line: None)
    check_results(workload, cfgs, threads)
    load = machine_load()
    say(f"{workload.name}: bound")
    bound = launch(workload, {"bound": True, "repeat": 3})
    rounds: dict[str, list[dict]] = {c.name: [] for c in cfgs}
    for r in range(processes):
        order = cfgs[r % len(cfgs):] + cfgs[: r % len(cfgs)]  # each configuration goes first in turn
        for config in order:
            say(f"{workload.name}: {config.name}, process {r + 1} of {processes}")
            spec = {"config": config.name, "exact": config.exact, "threads": threads, "runs": runs,
                    "warmup": warmup if warmup is not None else warmup_units(config, workload),
                    "memory": r == 0}
            rounds[config.name].append(launch(workload, spec))
    results = [Result.from_processes(c.name, c.exact, rounds[c.name]) for c in cfgs]
    report = Report.make(workload, results, bound, load, machine_info(threads), processes, runs)
    if peers:
        report.warnings += missing_peers(workload)
    return report


def resolve(target, feeds=None, fetch=None, *, mode="run", loss=None, batches=None, inputs=None,
            batch=None) -> Workload:
    """The workload a benchmark target names."""
    if isinstance(target, Workload):
        return target
    if isinstance(target, Graph):
        return from_graph(target, feeds, fetch, mode=mode, loss=loss, batches=batches)
    if isinstance(target, str):
        if target.endswith(".onnx"):
            return from_onnx(target, inputs, batch)
        path, function = parse_target(target)
        if path.endswith(".py"):
            return from_script(path, function)
    raise BenchmarkError(f"vf.benchmark: cannot benchmark {target!r}; give a vf.Graph (with feeds and fetch), "
                         f"a 'script.py:function' or an '.onnx' file")


def warmup_units(config: Config, workload: Workload) -> int:
    # The actor executor decides how to run in its first calls (or blocks of stream steps); every
    # configuration gets as many, so none is timed with colder caches than another.
    from ..actors.schedule import Choice

    return 3 if workload.mode == "stream" else Choice.calls_to_decide() + 3


def check_results(workload: Workload, cfgs: Sequence[Config], threads: int) -> None:
    """Every configuration once, here; their results must agree with the sequential executor's.

    Raises:
        BenchmarkError: a configuration failed, or gave other values (naming it and the difference).
    """
    outputs = {}
    for config in cfgs:
        run = runner(config, workload, threads)
        try:
            outputs[config.name] = run.unit()
            if config.name == "actor":  # it may run as one actor first: let it try the network too
                for _ in range(warmup_units(config, workload)):
                    again = run.unit()
                    _compare(outputs["sequential"], again, config)
        except BenchmarkError:
            raise
        except Exception as exc:
            raise BenchmarkError(f"{config.name} failed on {workload.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            run.close()
        _compare(outputs["sequential"], outputs[config.name], config)


def _compare(reference: list, got: list, config: Config) -> None:
    if len(reference) != len(got):
        raise BenchmarkError(f"{config.name} returned {len(got)} arrays, sequential {len(reference)}")
    for i, (a, b) in enumerate(zip(reference, got)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise BenchmarkError(f"{config.name} gives output {i} of shape {b.shape}, sequential {a.shape}")
        if config.exact:
            same = np.array_equal(a, b, equal_nan=True)
        else:
            same = np.allclose(b, a, rtol=1e-4, atol=1e-5, equal_nan=True)
        if not same:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            how = "bit for bit" if config.exact else "to rounding (rtol 1e-4)"
            raise BenchmarkError(f"{config.name} gives different values from sequential for output {i} "
                                 f"(largest difference {diff:.3g}; they must agree {how}); nothing was timed")


def _others_busy(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other processes, measured while this one sleeps (/proc/stat; None elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    return cores() * (1 - (idle1 - idle0) / elapsed) if elapsed > 0 else None


def machine_load() -> dict[str, Any]:
    """How busy the machine is with other work: cores others keep busy, and the spread of a calibration loop.

    The load average is kept for the record but not judged: it still counts the
    benchmark's own processes of the last minute.
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    others = _others_busy()
    a = np.random.default_rng(0).standard_normal((192, 192))
    times = []
    # One BLAS thread: with two, thread wake-ups alone make the loop vary by 5-70% on an idle VM.
    with blas_threads(1):
        for _ in range(21):
            start = time.perf_counter()
            for _ in range(8):
                np.tanh(a @ a)
            times.append(time.perf_counter() - start)
    q1, med, q3 = statistics.quantiles(times, n=4)
    spread = (q3 - q1) / med
    reasons = []
    if others is not None and others > 0.25:
        reasons.append(f"other processes kept {others:.2f} of {cores()} cores busy")
    elif others is None and load is not None and load > 0.5 * cores():
        reasons.append(f"load average {load:.2f} on {cores()} cores")
    if spread > 0.10:
        reasons.append(f"a calibration loop varied by {spread:.0%} (quartiles)")
    return {"load_average": load, "others_busy_cores": others, "calibration_spread": spread,
            "busy": bool(reasons), "reasons": reasons}


def machine_info(threads: int) -> dict[str, Any]:
    import platform

    return {
        "cores": cores(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "processor": platform.processor() or platform.machine(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "vector_extensions": vector_extensions(),
        "blas": blas_info(),
    }


def launch(workload: Workload, spec: dict) -> dict:
    """Run one benchmark process; its answer.

    A workload with a recipe gets a fresh interpreter; one built in memory, a forked
    process (or, where fork is missing, this process, which the report then says).

    Raises:
        BenchmarkError: the process failed (its error in one line).
    """
    if workload.recipe is not None:
        spec = dict(spec, recipe=workload.recipe)
        done = subprocess.run([sys.executable, "-m", "vertexflow.benchmarks.child"], input=json.dumps(spec),
                              capture_output=True, text=True, env=_child_env())
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchmarkError(f"a benchmark process of {workload.name} failed: {tail}") from None
    else:
        result = _forked(workload, spec)
    if "error" in result:
        raise BenchmarkError(f"a benchmark process of {workload.name} failed: {result['error']}")
    return result


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def _forked(workload: Workload, spec: dict) -> dict:
    from .child import run_spec

    if "fork" not in multiprocessing.get_all_start_methods():
        result = run_spec(spec, workload)
        result["in_process"] = True
        return result
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads alive (Python 3.12+)
        process = context.Process(target=_forked_main, args=(send, workload, spec), daemon=True)
        process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": f"the forked process ended with status {process.exitcode}"}
    process.join()
    return result


def _forked_main(send, workload: Workload, spec: dict) -> None:
    from .child import run_spec

    try:
        result = run_spec(spec, workload)
    except BaseException as exc:  # noqa: BLE001
        result = {"error": f"{type(exc).__name__}: {exc}"}
    send.send(result)
    send.close()
