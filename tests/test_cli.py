"""The `vertexflow` command end to end, at tiny sizes, in a temporary directory (no timing assertions)."""

import json
import subprocess
import sys

import pytest

from vertexflow.cli import main


def test_demo_writes_its_trace_and_says_where(tmp_path, capsys):
    assert main(["demo", "--branches", "3", "--depth", "2", "--rows", "16", "--cols", "32",
                 "--repeat", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "outputs identical on both executors: yes" in out
    assert "speedup" in out and "ideal bound" in out and "efficiency" in out
    assert str(tmp_path / "trace.html") in out and str(tmp_path / "trace.json") in out
    page = (tmp_path / "trace.html").read_text()
    assert page.startswith("<!doctype html>") and "default-src 'none'" in page
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert any(e["ph"] == "X" for e in events)


def test_bench_writes_json_markdown_and_plot(tmp_path):
    """One family of each mode (a step, a stream, a training step), in a process of its own as a user runs it."""
    pytest.importorskip("matplotlib")
    paths = {k: tmp_path / f"bench.{k}" for k in ("json", "md", "png")}
    command = [sys.executable, "-m", "vertexflow.cli", "bench", "--suite", "quick", "--tiny", "--repeat", "1",
               "--quiet", "--family", "wide", "--family", "mlp_ensemble", "--family", "mlp_train",
               "--json", str(paths["json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(paths["json"].read_text())
    assert report["schema"] == "vertexflow.bench/1" and report["suite"] == "quick" and report["tiny"]
    assert report["command"].startswith("vertexflow bench --suite quick")
    assert report["machine"]["cores"] >= 1
    assert {r["family"] for r in report["results"]} == {"wide", "mlp_ensemble", "mlp_train"}
    assert {r["mode"] for r in report["results"]} == {"run", "stream", "backward"}
    executors = {r["executor"] for r in report["results"]}
    assert {"sequential", "actor-1", "numpy"} <= executors
    for r in report["results"]:
        assert set(r) >= {"workload", "executor", "median_s", "q1_s", "q3_s", "speedup", "ideal_s", "efficiency",
                          "overhead_per_vertex_us", "peak_bytes", "times_s", "vertices"}
        assert r["median_s"] > 0 and len(r["times_s"]) == 3  # one round of three runs
    table = paths["md"].read_text()
    assert table.count("\n|") >= len(report["results"]) and "| workload |" in table
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sequential" in done.stdout


def test_the_quick_suite_covers_every_family():
    from vertexflow.benchmarks.families import FAMILIES
    from vertexflow.benchmarks.report import SUITES, shrink

    assert {family for family, _ in SUITES["quick"]} == set(FAMILIES)
    for family, sizes in SUITES["quick"]:  # and every one builds at its tiny size
        workload = FAMILIES[family](**shrink(family, sizes))
        assert workload.vertices > 0


def test_trace_command_on_an_example_and_a_script(tmp_path):
    out = tmp_path / "t.html"
    assert main(["trace", "inception", "--out", str(out), "--steps", "1", "--graph"]) == 0
    assert out.exists() and (tmp_path / "t.json").exists()
    assert (tmp_path / "t.dot").read_text().startswith('digraph "inception"')
    script = tmp_path / "mine.py"
    script.write_text(
        "import numpy as np, vertexflow as vf\n"
        "g = vf.Graph()\nx = g.input('x', shape=(4,))\n"
        "vf.SequentialExecutor(g).run({x: np.ones(4, 'float32')}, vf.exp(x, name='mine'))\n"
    )
    assert main(["trace", str(script), "--out", str(tmp_path / "s.html")]) == 0
    assert "mine" in (tmp_path / "s.html").read_text()
    with pytest.raises(SystemExit, match="neither a built-in example nor a script"):
        main(["trace", "no-such-thing", "--out", str(tmp_path / "x.html")])


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "vertexflow.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "demo" in done.stdout and "bench" in done.stdout
