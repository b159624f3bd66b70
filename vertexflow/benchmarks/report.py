"""Benchmark suites and their reports: a terminal table, JSON, Markdown and a PNG plot."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from ..machine import blas_info, cores
from .families import FAMILIES, Workload
from .measure import Measurement, measure

# (family, sizes) per suite.
SUITES: dict[str, list[tuple[str, dict]]] = {
    "quick": [
        ("wide", dict(branches=2, depth=6)),
        ("wide", dict(branches=4, depth=6)),
        ("wide", dict(branches=8, depth=6)),
        ("deep", dict(length=12)),
        ("inception", dict(blocks=3, width=4)),
        ("random_dag", dict(vertices=60)),
        ("fine_grained", dict(vertices=100)),
        ("fine_grained", dict(vertices=1000)),
        ("mlp_ensemble", dict(members=4, batches=50)),
        ("mlp_train", dict(batch=100)),
        ("cnn_block", dict(batch=16)),
    ],
    "full": [
        *[("wide", dict(branches=b, depth=6)) for b in (1, 2, 4, 8, 16)],
        ("deep", dict(length=40)),
        ("inception", dict(blocks=4, width=4)),
        ("random_dag", dict(vertices=120)),
        *[("fine_grained", dict(vertices=v)) for v in (100, 300, 1000, 3000)],
        ("mlp_ensemble", dict(members=4, batches=200)),
        ("mlp_train", dict(batch=100)),
        ("cnn_block", dict(batch=32)),
    ],
}


# `--tiny`: the same workloads shrunk to run in seconds (for tests); vertex counts are capped.
TINY: dict[str, dict] = {
    "wide": dict(depth=2, rows=32, cols=64),
    "deep": dict(length=3, rows=32, cols=64),
    "inception": dict(blocks=1, width=2, rows=32, cols=64),
    "random_dag": dict(vertices=10, rows=16, cols=32),
    "fine_grained": dict(size=8),
    "mlp_ensemble": dict(members=2, batch=8, hidden=32, batches=4),
    "mlp_train": dict(batch=8),
    "cnn_block": dict(batch=2, channels=2, size=8),
}


def shrink(family: str, params: dict) -> dict:
    out = dict(params, **TINY.get(family, {}))
    if family == "fine_grained":
        out["vertices"] = max(10, params.get("vertices", 1000) // 20)
    if family == "wide":
        out["branches"] = min(params.get("branches", 8), 4)
    return out


def machine() -> dict:
    """What the figures were measured on."""
    info = {
        "cores": cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "processor": platform.processor() or platform.machine(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    info["blas"] = blas_info()
    return info


def run_suite(
    suite: str = "quick",
    families: list[str] | None = None,
    threads: list[int] | None = None,
    repeat: int = 3,
    with_dask: bool = True,
    progress: bool = True,
    sizes: dict | None = None,
    tiny: bool = False,
) -> dict:
    """Measure every workload of a suite; returns the report (the JSON document)."""
    plan = [(f, dict(p)) for f, p in SUITES[suite] if not families or f in families]
    if families and not plan:
        plan = [(f, {}) for f in families]
    if tiny:
        plan = list({repr((f, shrink(f, p))): (f, shrink(f, p)) for f, p in plan}.values())
    plan = [(f, dict(p, **(sizes or {}))) for f, p in plan]
    threads = threads or sorted({1, cores()})
    bar = _progress_bar(len(plan) * repeat, progress)
    results: list[Measurement] = []
    started = time.time()
    try:
        for family, params in plan:
            workload: Workload = FAMILIES[family](**params)
            bar.set_description(workload.name[:48])
            results += measure(workload, threads=threads, repeat=repeat, with_dask=with_dask,
                               progress=lambda _: bar.update(1))
    finally:
        bar.close()
    return {
        "schema": "vertexflow.bench/1",
        "suite": suite,
        "tiny": tiny,
        "command": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": time.time() - started,
        "machine": machine(),
        "threads": threads,
        "repeat": repeat,
        "results": [m.as_dict() for m in results],
    }


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="round", leave=False, dynamic_ncols=True)


COLUMNS = ["workload", "executor", "median", "IQR", "vs sequential", "efficiency", "overhead/vertex", "peak MB"]


def rows(report: dict) -> list[list[str]]:
    out = []
    for r in report["results"]:
        out.append([
            r["workload"],
            r["executor"],
            _ms(r["median_s"]),
            f"{_ms(r['q1_s'])}-{_ms(r['q3_s'])}",
            f"{r['speedup']:.2f}x",
            f"{100 * r['efficiency']:.0f}%",
            f"{r['overhead_per_vertex_us']:.1f} us",
            "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}",
        ])
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def table(report: dict) -> str:
    """A plain-text table for the terminal."""
    body = rows(report)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(COLUMNS)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in body)])


def markdown(report: dict) -> str:
    m = report["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, {b['architecture']})"
                     for b in m.get("blas", [])) or "unknown"
    head = [
        f"Suite `{report['suite']}`, {report['repeat']} rounds, on {m['cores']} cores, "
        f"Python {m['python']}, numpy {m['numpy']}, BLAS: {blas}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    if report.get("command"):
        head.insert(1, f"Command: `{report['command']}`")
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows(report)]) + "\n"


def plot(report: dict, path: str) -> str | None:
    """Speedup against graph width (wide family) and overhead per vertex against vertex count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _series(left, [r for r in results if r["family"] == "wide"], "branches", "speedup")
    left.axhline(1.0, color="#888", lw=0.8, ls="--")
    left.set(xlabel="independent branches (wide graph)", ylabel="speedup over sequential",
             title="Speedup against graph width")
    _series(right, [r for r in results if r["family"] == "fine_grained"], "vertices", "overhead_per_vertex_us")
    right.set(xlabel="vertices (fine-grained graph)", ylabel="overhead per vertex (us)",
              title="Overhead per vertex", xscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"vertexflow bench --suite {report['suite']} ({report['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(ax, results: list[dict], x_key: str, y_key: str) -> None:
    by_executor: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        by_executor.setdefault(r["executor"], []).append((r["params"][x_key], r[y_key]))
    for name, points in sorted(by_executor.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)


def write_all(report: dict, json_path: str | None, markdown_path: str | None, plot_path: str | None,
              say: Callable[[str], None] = print) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        say(f"JSON: {json_path}")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(markdown(report))
        say(f"Markdown: {markdown_path}")
    if plot_path:
        done = plot(report, plot_path)
        say(f"plot: {plot_path}" if done else "plot skipped: matplotlib is not installed (pip install 'vertexflow[bench]')")
