"""The `vertexflow` command end to end, at tiny sizes, as a user runs it (no timing assertions)."""

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vertexflow as vf
from vertexflow.cli import main

SCRIPT = """
import numpy as np
import vertexflow as vf


def build():
    with open({marker!r}, "w") as f:
        f.write("built")
    g = vf.Graph("two_branches")
    x = g.input("x", shape=(None, 16), dtype="float64")
    w = g.param("w", value=np.eye(16))
    out = vf.tanh(x @ w) + vf.sigmoid(x)
    return g, {{x: np.ones((8, 16))}}, [out]
"""


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vertexflow.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(done, words):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in lines[0], lines[0]


def test_demo_benchmarks_both_executors_and_writes_its_trace(tmp_path, capsys):
    assert main(["demo", "--branches", "3", "--depth", "2", "--rows", "16", "--cols", "32",
                 "--processes", "1", "--runs", "2", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "outputs identical on both executors: yes" in out
    assert "speedup" in out and "lower bound" in out and "efficiency" in out
    assert "numpy by hand (" in out and "of the hand-threaded one's" in out
    assert str(tmp_path / "trace.html") in out and str(tmp_path / "trace.json") in out
    page = (tmp_path / "trace.html").read_text()
    assert page.startswith("<!doctype html>") and "default-src 'none'" in page
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert any(e["ph"] == "X" for e in events)


def test_bench_families_write_json_pyperf_markdown_and_plot(tmp_path):
    """One family of each mode (a step, a stream, a training step), in processes of their own."""
    pytest.importorskip("matplotlib")
    paths = {k: tmp_path / f"bench.{k}" for k in ("json", "pyperf.json", "md", "png")}
    done = _cli("bench", "--tiny", "--processes", "1", "--runs", "2", "--quiet", "--family", "wide",
                "--family", "mlp_ensemble", "--family", "mlp_train", "--json", str(paths["json"]),
                "--pyperf", str(paths["pyperf.json"]), "--markdown", str(paths["md"]), "--plot", str(paths["png"]))
    assert done.returncode == 0, done.stderr
    suite = json.loads(paths["json"].read_text())
    assert suite["schema"] == "vertexflow.bench-suite/2" and suite["suite"] == "quick" and suite["tiny"]
    assert suite["command"].startswith("vertexflow bench --tiny")
    reports = suite["reports"]
    assert {r["family"] for r in reports} == {"wide", "mlp_ensemble", "mlp_train"}
    assert {r["mode"] for r in reports} == {"run", "stream", "backward"}
    for report in reports:
        assert report["schema"] == "vertexflow.bench/2"
        assert report["bound"]["ideal_s"] <= report["bound"]["total_work_1_thread_s"]
        executors = {r["executor"] for r in report["results"]}
        assert {"sequential", "actor"} <= executors
        for r in report["results"]:
            assert set(r) >= {"executor", "median_s", "q1_s", "q3_s", "ci95_s", "speedup", "speedup_ci95",
                              "efficiency", "gap_per_vertex_us", "peak_bytes", "times_s",
                              "process_medians_s"}
            assert r["median_s"] > 0 and len(r["times_s"]) == 2
    pyperf = json.loads(paths["pyperf.json"].read_text())
    assert pyperf["version"] == "1.0" and len(pyperf["benchmarks"]) >= 6
    assert "| executor |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sequential" in done.stdout


def test_bench_a_users_script(tmp_path):
    marker = tmp_path / "built"
    script = tmp_path / "my_model.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    done = _cli("bench", f"{script}:build", "--processes", "1", "--runs", "2", "--quiet", "--json",
                str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "vertexflow.bench/2" and report["workload"].endswith("my_model.py:build")
    assert report["recipe"] == {"kind": "script", "path": str(script), "function": "build"}
    assert {r["executor"] for r in report["results"]} >= {"sequential", "actor", "dask-sync", "dask-threaded"}
    assert "lower bound" in done.stdout


def test_bench_an_onnx_model_against_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    done = _cli("bench", str(path), "--batch-size", "4", "--processes", "1", "--runs", "2", "--quiet", "--json",
                str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {r["executor"] for r in report["results"]} >= {"sequential", "actor", "onnxruntime",
                                                          "onnxruntime-parallel"}


@pytest.mark.parametrize("args, words", [
    (["bench", "{script}:nosuch"], "has no function 'nosuch'; functions there: build"),
    (["bench", "{missing}"], "no such file"),
    (["bench", "{script}", "--executor", "warp"], "unknown --executor 'warp'"),
    (["bench", "--family", "wide", "--size", "nosuch=3"], "--size nosuch= is not a size of wide"),
    (["bench", "--size", "rows=abc"], "rows= takes a whole number, got 'abc'"),
    (["bench", "--processes", "0"], "must be at least 1, got 0"),
    (["bench", "{script}", "--json", "/nonexistent/x.json"], "the folder /nonexistent does not exist"),
    (["demo", "--branches", "0"], "must be at least 1, got 0"),
    (["trace", "no-such-thing"], "is neither a built-in example"),
    (["run", "{missing}"], "no such file"),
    (["run", "{corrupt}"], "not an ONNX model"),
    (["train", "mlp", "--epochs", "0"], "vertexflow train mlp: argument --epochs: must be at least 1, got 0"),
    (["train", "mlp", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["train", "mlp", "--lr", "-1"], "argument --lr: must be above 0, got -1"),
    (["train", "cnn", "--save", "/nonexistent/m.npz"], "the folder /nonexistent does not exist"),
    (["train", "linear", "--save", "{tmp}/m.pkl"], "a model file ends in .npz or .safetensors"),
])
def test_mistakes_get_one_line_and_status_2_before_any_work(tmp_path, args, words):
    marker = tmp_path / "built"
    script = tmp_path / "my_model.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage")
    filled = [a.format(script=script, missing=tmp_path / "missing.onnx", corrupt=tmp_path / "corrupt.onnx",
                       tmp=tmp_path) for a in args]
    done = _cli(*filled, timeout=120)
    _one_line_error(done, words)
    if "nosuch'" not in words:
        assert not marker.exists()  # the target was never built


def test_version_and_help_on_every_command():
    import vertexflow

    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"vertexflow {vertexflow.__version__}"
    for command in ("demo", "bench", "trace", "run", "train"):
        done = _cli(command, "--help")
        assert done.returncode == 0 and "usage: vertexflow" in done.stdout, command
    assert "(default: 3)" in _cli("bench", "--help").stdout


def test_trace_command_on_an_example_and_a_script(tmp_path, capsys):
    out = tmp_path / "t.html"
    assert main(["trace", "inception", "--out", str(out), "--steps", "1", "--graph"]) == 0
    assert out.exists() and (tmp_path / "t.json").exists()
    assert (tmp_path / "t.dot").read_text().startswith('digraph "inception"')
    script = tmp_path / "mine.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, vertexflow as vf
        g = vf.Graph()
        x = g.input('x', shape=(4,))
        vf.SequentialExecutor(g).run({x: np.ones(4, 'float32')}, vf.exp(x, name='mine'))
    """))
    assert main(["trace", str(script), "--out", str(tmp_path / "s.html")]) == 0
    assert "mine" in (tmp_path / "s.html").read_text()


def test_the_quick_suite_covers_every_family():
    from vertexflow.benchmarks.families import FAMILIES
    from vertexflow.benchmarks.report import SUITES, shrink

    assert {family for family, _ in SUITES["quick"]} == set(FAMILIES) - {"chain"}  # the distributed suite's
    assert {family for suite in SUITES.values() for family, _ in suite} == set(FAMILIES)
    for family, sizes in SUITES["quick"] + SUITES["distributed"]:  # and every one builds at its tiny size
        workload = FAMILIES[family](**shrink(family, sizes))
        assert workload.vertices > 0


def test_trace_runs_a_benchmark_target_after_warm_up_and_compares(tmp_path, capsys):
    script = tmp_path / "target.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, vertexflow as vf
        def build():
            g = vf.Graph()
            x = g.input('x', shape=(None, 8), dtype='float64')
            return g, {x: np.ones((4, 8))}, [vf.tanh(x, name='left') + vf.exp(x, name='right')]
    """))
    out = tmp_path / "c.html"
    assert main(["trace", f"{script}:build", "--compare", "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "against SequentialExecutor" in printed and "ideal (the sequential work" in printed
    tracer = vf.Tracer.load(str(tmp_path / "c.json"))
    # Only the traced steps: three per executor, none of the warm-up's.
    for track in tracer.track_ids():
        steps = {(s.run, s.step) for s in tracer.spans if s.track == track and s.vertex == "left"}
        assert len(steps) == 3
    assert main(["trace", f"{script}:nothing", "--out", str(out)]) == 2
    assert "has no function 'nothing'" in capsys.readouterr().err


def test_training_logs_are_a_line_per_epoch_and_tqdm_disable_is_honoured():
    pytest.importorskip("sklearn")
    done = _cli("train", "mlp", "--epochs", "3", "--limit", "256")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\r" not in done.stdout  # no bar redraws in a log
    epochs = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert len(done.stderr) + len(done.stdout) < 1000
    import os

    quiet = subprocess.run([sys.executable, "-m", "vertexflow.cli", "train", "mlp", "--epochs", "2", "--limit", "128"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert quiet.returncode == 0 and "epoch " not in quiet.stderr
    assert "test accuracy after 2 epochs" in quiet.stdout


def test_bench_piped_prints_a_line_per_configuration_not_a_bar():
    """stderr not a terminal: whole lines as the suite moves on (no carriage returns), never silence."""
    done = _cli("bench", "--tiny", "--processes", "1", "--runs", "1", "--family", "wide", "--no-peers")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) >= 3 and "\r" not in done.stderr  # one per process started, at least


FILES = {
    "good.py": SCRIPT,
    "syntax.py": "def build(:\n    pass\n",
    "imports.py": "import no_such_module_here\n",
    "raises.py": "def build():\n    raise RuntimeError('boom in the build')\n",
    "not_a_graph.py": "def build():\n    return 3, {}, []\n",
    "a_file.py": "x = 1\n",
}

SECOND_PASS = [
    # errors in the user's own script: FILE:LINE, the exception, and where the traceback is
    (["bench", "{tmp}/syntax.py"], "syntax.py:1: SyntaxError: invalid syntax", None),
    (["bench", "{tmp}/imports.py:build"], "imports.py:1: ModuleNotFoundError: No module named 'no_such_module_here' "
                                          "(--debug for the traceback)", None),
    (["bench", "{tmp}/raises.py:build"], "raises.py:2: RuntimeError: boom in the build (--debug", None),
    (["trace", "{tmp}/raises.py:build"], "raises.py:2: RuntimeError: boom in the build", None),
    (["trace", "{tmp}/syntax.py"], "syntax.py:1: SyntaxError", None),
    (["bench", "{tmp}/not_a_graph.py:build"], "vertexflow bench: {tmp}/not_a_graph.py:build must return the graph "
                                              "(a vf.Graph) first", None),
    # outputs checked before any work
    (["demo", "--out", "/proc/vf-nope"], "vertexflow demo: argument --out: /proc/vf-nope: /proc is not writable",
     None),
    (["demo", "--out", "{tmp}/a_file.py"], "a_file.py is a file; give a folder", None),
    (["run", "{tmp}/tiny.onnx", "--input", "x={tmp}/x.npy", "--out", "{tmp}/a_file.py"], "is a file; give a folder",
     None),
    (["run", "{tmp}/tiny.onnx", "--input", "x={tmp}/x.npy", "--trace", "{tmp}/out.txt"],
     "the viewer is an HTML page; give a name ending in .html", "out.txt"),
    (["bench", "{tmp}/good.py:build", "--plot", "{tmp}/out.txt"], "a plot is written as one of", "out.txt"),
    (["bench", "{tmp}/good.py:build", "--json", "/proc/vf-x.json"], "the folder /proc is not writable", None),
    (["trace", "wide", "--out", "{tmp}/t.json"], "give a name ending in .html", "t.json"),
    (["train", "mlp", "--train-images", "{tmp}/nope.idx"], "vertexflow train mlp: argument --train-images: "
                                                            "{tmp}/nope.idx: no such file", None),
    (["train", "mlp", "--train-images", "{tmp}/x.npy"], "MNIST needs all four IDX files; missing --train-labels",
     None),
    # no abbreviations, no silent repeats, one prefix
    (["train", "mlp", "--epoch", "3"], "vertexflow train mlp: unrecognized arguments: --epoch 3", None),
    (["train", "mlp", "--batch", "3"], "vertexflow train mlp: unrecognized arguments: --batch 3", None),
    (["bench", "--tin"], "vertexflow bench: unrecognized arguments: --tin", None),
    (["demo", "--branch", "3"], "vertexflow demo: unrecognized arguments: --branch 3", None),
    (["run", "{tmp}/tiny.onnx", "--input", "x={tmp}/x.npy", "--input", "x={tmp}/x.npy"],
     "vertexflow run: --input x= is given more than once", None),
    (["bench", "{tmp}/tiny.onnx", "--input", "x={tmp}/x.npy", "--input", "x={tmp}/x.npy"],
     "vertexflow bench: --input x= is given more than once", None),
    (["bench", "{tmp}/tiny.onnx", "--batch", "8"], "vertexflow bench: unrecognized arguments: --batch 8", None),
    (["run", "{tmp}/tiny.onnx", "--input", "x={tmp}/empty.npy"], "empty.npy: the file has 0 rows", None),
    (["train"], "vertexflow train: give an example: autoencoder, cnn, linear, mlp", None),
    (["nosuchcommand"], "vertexflow: argument command: invalid choice: 'nosuchcommand'", None),
]


def _second_pass_files(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    for name, text in FILES.items():
        (tmp_path / name).write_text(text.format(marker=str(tmp_path / "built")) if name == "good.py" else text)
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "tiny.onnx"))
    np.save(tmp_path / "x.npy", np.ones((10, 8), np.float32))
    np.save(tmp_path / "empty.npy", np.ones((0, 8), np.float32))


@pytest.mark.parametrize("args, words, unwritten", SECOND_PASS)
def test_every_mistake_is_one_line_and_status_2_before_any_work(tmp_path, capsys, args, words, unwritten):
    _second_pass_files(tmp_path)
    filled = [a.format(tmp=tmp_path) for a in args]
    assert main(filled) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert words.format(tmp=tmp_path) in lines[0], lines[0]
    assert lines[0].startswith(("vertexflow", str(tmp_path))), lines[0]  # one prefix, or the user's FILE:LINE
    assert captured.out == ""  # nothing ran: no report, no progress
    assert not (tmp_path / "built").exists()
    if unwritten:
        assert not (tmp_path / unwritten).exists()


def test_debug_anywhere_on_the_line_shows_the_traceback(tmp_path):
    _second_pass_files(tmp_path)
    for args in (["--debug", "bench", f"{tmp_path}/raises.py:build"], ["bench", f"{tmp_path}/raises.py:build", "--debug"]):
        done = _cli(*args, timeout=120)
        assert done.returncode == 1 and "Traceback" in done.stderr and "RuntimeError: boom in the build" in done.stderr


@pytest.mark.parametrize("command", [["bench", "{tmp}/tiny.onnx"], ["run", "{tmp}/tiny.onnx", "--input", "x={tmp}/x.npy"],
                                     ["trace", "{tmp}/tiny.onnx"]])
def test_a_missing_onnx_extra_is_one_line_with_the_install_line(tmp_path, command):
    _second_pass_files(tmp_path)
    blocked = ("import sys; sys.modules['onnx'] = None; from vertexflow.cli import main; "
               "sys.exit(main(sys.argv[1:]))")  # onnx unimportable, as where the extra is not installed
    done = subprocess.run([sys.executable, "-c", blocked, *[a.format(tmp=tmp_path) for a in command]],
                          capture_output=True, text=True, timeout=120)
    _one_line_error(done, f"vertexflow {command[0]}: ONNX models need the onnx package (pip install onnx")


def test_a_missing_peer_is_named_in_the_report_not_dropped(monkeypatch):
    from vertexflow.benchmarks import configs
    from vertexflow.benchmarks.families import FAMILIES

    monkeypatch.setattr(configs, "_importable", lambda module: module != "dask")
    workload = FAMILIES["wide"](branches=2, depth=1, rows=8, cols=8)
    assert "dask-sync" not in configs.applicable_peers(workload)
    assert configs.missing_peers(workload) == ["dask-sync and dask-threaded are left out: dask is not installed "
                                               "(pip install dask, or pip install -e '.[bench]')"]


def test_every_option_of_every_command_has_help_and_the_batch_flag_one_name():
    for command in (["demo"], ["bench"], ["trace"], ["run"], ["train", "mlp"], ["train", "cnn"]):
        text = _cli(*command, "--help").stdout
        assert "--batch " not in text and "--batch\n" not in text, command
        lines = text.splitlines()
        for k, line in enumerate(lines):
            if not line.startswith("  -") or "--help" in line:
                continue
            # the help is on the option's line after a gap, or on the next line, indented under it
            follows = lines[k + 1] if k + 1 < len(lines) else ""
            assert re.search(r"\S\s{2,}\S", line.strip()) or (follows.startswith(" " * 8) and follows.strip()
                                                                and not follows.strip().startswith("-")), \
                (command, line)
        assert "(default: None)" not in text and "default: not saved) (default" not in text, command
    assert "(default: 30)" in _cli("train", "mlp", "--help").stdout
    assert "(default: 0)" in _cli("train", "mlp", "--help").stdout  # a zero default is shown, not taken for none
    assert "talk" not in _cli("train", "mlp", "--help").stdout
