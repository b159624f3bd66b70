"""vf.benchmark on a user's graph: the report, its JSON, results checked before timing, bad arguments."""

import json
import os
import threading

import numpy as np
import pytest

import vertexflow as vf
from vertexflow.benchmarks import measure


def _graph():
    g = vf.Graph("branches")
    x = g.input("x", shape=(None, 16), dtype="float64")
    w = g.param("w", value=np.eye(16) * 0.5)
    out = vf.tanh(x @ w) + vf.sigmoid(x * 2.0)
    return g, {x: np.ones((8, 16))}, out


def test_benchmark_reports_every_executor_with_honest_summaries(tmp_path):
    g, feeds, out = _graph()
    report = vf.benchmark(g, feeds, [out], executors=("sequential", "actor", "actor-network"), processes=2, runs=3)
    names = [r.executor for r in report.results]
    assert names[:3] == ["sequential", "actor", "actor-network"] and "dask-sync" in names
    seq = report.result("sequential")
    assert seq.speedup == 1.0 and len(seq.times_s) == 6 and len(seq.process_medians_s) == 2
    assert seq.ci95_s[0] <= seq.median_s <= seq.ci95_s[1]
    assert report.bound["ideal_s"] <= report.bound["total_work_1_thread_s"]
    for r in report.results:
        low, high = r.speedup_ci95
        assert low <= r.speedup <= high
        if r.exact:  # vertexflow's executors, against the bound of this graph's schedules
            assert r.efficiency == pytest.approx(report.bound["ideal_s"] / r.median_s)
        else:
            assert r.efficiency is None
    text = str(report)
    assert "lower bound" in text and "vs sequential" in text and "actor-network" in text
    # A machine that pins OpenBLAS's kernels is told so: it slows numpy's products, not onnxruntime's.
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    assert any(f"OPENBLAS_CORETYPE={pinned} pins" in a for a in report.advice) == bool(pinned)
    report.save(str(tmp_path / "r.json"))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["schema"] == "vertexflow.bench/2" and saved["mode"] == "run" and saved["recipe"] is None
    assert {r["executor"] for r in saved["results"]} == set(names)


def test_backward_and_stream_modes():
    g, feeds, out = _graph()
    loss = vf.sum(out * out, name="loss")
    report = vf.benchmark(g, feeds, None, mode="backward", loss=loss, processes=1, runs=2, peers=False)
    assert report.mode == "backward" and [r.executor for r in report.results] == ["sequential", "actor"]
    stream = vf.benchmark(g, feeds, [out], mode="stream", batches=[feeds] * 6, processes=1, runs=2, peers=False)
    assert stream.mode == "stream" and stream.bound["steps"] == 6


class Moody(vf.ops.Op):
    """Gives other values on the actor executor's worker threads: a bug the benchmark must catch."""

    name = "moody"

    def infer(self, x):
        return x

    def forward(self, xp, x):
        on_worker = threading.current_thread().name.startswith("vf-")
        return x + (1.0 if on_worker else 0.0)

    def cost(self, x):
        return 1e12


def test_different_results_are_refused_before_anything_is_timed(monkeypatch):
    g = vf.Graph()
    x = g.input("x", shape=(4,), dtype="float64")
    out = Moody()(vf.tanh(x)) + Moody()(vf.exp(x))
    monkeypatch.setattr(measure, "launch", lambda *a, **k: pytest.fail("a process was started"))
    with pytest.raises(vf.BenchmarkError, match="actor-network gives different values from sequential for output 0 "
                                                "\\(largest difference 2; they must agree bit for bit\\); "
                                                "nothing was timed"):
        vf.benchmark(g, {x: np.ones(4)}, [out], executors=("sequential", "actor-network"), peers=False)


@pytest.mark.parametrize("kwargs, words", [
    (dict(executors=("sequential", "warp")), "unknown executor 'warp'"),
    (dict(processes=0), "processes= must be an int >= 1, got 0"),
    (dict(runs="5"), "runs= must be an int >= 1, got '5'"),
    (dict(mode="fast"), "mode= must be one of run, backward, stream, got 'fast'"),
    (dict(mode="backward"), "mode='backward' needs loss="),
])
def test_bad_arguments_are_refused_with_what_to_do(kwargs, words):
    g, feeds, out = _graph()
    with pytest.raises(vf.BenchmarkError, match=words):
        vf.benchmark(g, feeds, [out.reshape(-1)] if kwargs.get("mode") == "backward" else [out], **kwargs)


def test_targets_that_do_not_build_say_why(tmp_path):
    with pytest.raises(vf.BenchmarkError, match="cannot benchmark 42"):
        vf.benchmark(42)
    with pytest.raises(vf.BenchmarkError, match="no such file"):
        vf.benchmark(str(tmp_path / "nope.py") + ":build")
    script = tmp_path / "bad.py"
    script.write_text("def build():\n    return 3\n")
    with pytest.raises(vf.BenchmarkError, match="must return \\(graph, feeds, fetch\\)"):
        vf.benchmark(f"{script}:build")


def test_a_busy_machine_is_said_to_be_busy():
    """Another process spins on a core while the benchmark measures the machine."""
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        g, feeds, out = _graph()
        report = vf.benchmark(g, feeds, [out], processes=1, runs=2, peers=False)
    finally:
        spinner.kill()
        spinner.wait()
    assert report.load["busy"] and report.warnings[0].startswith("the machine was busy (other processes kept")
    assert "unreliable" in str(report)


def test_waiting_work_is_measured_against_trio_asyncio_and_dask_by_hand():
    """The family of async vertices: its peers written by hand agree with the graph, and the lower bound
    counts the awaits on the critical path (an await holds no core, so it is not work)."""
    from vertexflow.benchmarks.families import waiting

    workload = waiting(vertices=4, seconds=0.002, size=4)
    report = vf.benchmark(workload, processes=1, runs=2)
    names = [r.executor for r in report.results]
    assert {"sequential", "actor", "trio-by-hand", "asyncio-by-hand", "dask-threaded"} <= set(names)
    assert "network" in report.result("actor").info and "may wait" in report.result("actor").info
    assert report.bound["awaited_s"] >= 4 * 0.002
    assert report.bound["critical_path_s"] >= 0.002 > report.bound["total_work_1_thread_s"] / 4
    assert "with its awaits" in str(report)


def test_a_report_marks_figures_no_run_can_give_as_invalid_and_plots_intervals(tmp_path):
    """Timings faster than the lower bound (noise in the bound under load) or more than N x on N cores
    for work that waits for nothing are rows marked invalid, never figures."""
    from types import SimpleNamespace

    from vertexflow.benchmarks.report import Report, Result, SuiteReport

    def result(name, times, exact=True):
        return Result.from_processes(name, exact, [{"times_s": times}, {"times_s": times}])

    workload = SimpleNamespace(name="wide(branches=4)", mode="run", vertices=10, recipe=None, family="wide",
                               params={"branches": 4})
    bound = {"ideal_s": 0.010, "critical_path_s": 0.005, "total_work_1_thread_s": 0.02, "cores": 2}
    report = Report.make(workload, [result("sequential", [0.030] * 3), result("actor", [0.008] * 3),
                                    result("numpy", [0.012] * 3, exact=False)], bound, {}, {"cores": 2}, 2, 3)
    actor, seq = report.result("actor"), report.result("sequential")
    assert actor.invalid and "faster than the lower bound" in actor.invalid and seq.invalid is None
    row = next(r for r in report.rows() if r[0] == "actor")
    assert row[5] == "invalid" and row[6] == "invalid" and "(invalid)" in row[4]
    assert "137%" not in str(report) and any("marked invalid" in w for w in report.warnings)
    assert report.result("numpy").invalid  # 2.5x on 2 cores
    if __import__("importlib").util.find_spec("matplotlib"):
        assert SuiteReport("quick", False, [report], 1.0).plot(str(tmp_path / "p.png"))


def test_sizes_that_make_two_configurations_one_run_it_once():
    from vertexflow.benchmarks.report import suite_plan

    assert [f for f, _ in suite_plan("quick", ["wide"])] == ["wide", "wide"]  # two widths of it
    assert suite_plan("quick", ["wide"], {"branches": 4, "depth": 3}) == [("wide", {"branches": 4, "depth": 3})]
    assert len(suite_plan("quick", ["wide"], {"rows": 64})) == 2  # still two widths
