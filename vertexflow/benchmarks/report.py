"""Benchmark reports: figures per configuration, honest summaries, advice; tables, JSON, Markdown, plots.

A `Report` is one workload's figures: for each configuration its median
(over every timed run of every process), quartiles, a 95% confidence
interval (a bootstrap that resamples processes, then runs), its speedup over
the sequential executor with an interval, its efficiency against the lower
bound (which no schedule can beat: the figure is at most 100% up to noise,
and said to be noise when it is not), peak memory, and what the actor
executor decided. Warnings say when the machine was busy or the processes
disagree; advice says, from the figures, why the concurrent run did or did
not pay and what to try. `SuiteReport` gathers the reports of a suite of
graph families. JSON schemas: bench/README.md.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

SCHEMA = "vertexflow.bench/2"
SUITE_SCHEMA = "vertexflow.bench-suite/2"


def _bootstrap(processes: Sequence[Sequence[float]], rng: np.random.Generator, n: int = 1000) -> np.ndarray:
    """Medians of `n` resamples: processes with replacement, then runs within each."""
    arrays = [np.asarray(p) for p in processes]
    out = np.empty(n)
    for i in range(n):
        picked = [arrays[j] for j in rng.integers(0, len(arrays), len(arrays))]
        out[i] = np.median(np.concatenate([a[rng.integers(0, len(a), len(a))] for a in picked]))
    return out


@dataclass
class Result:
    """One configuration's figures on one workload (seconds unless said)."""

    executor: str
    exact: bool
    times_s: list[float]
    process_medians_s: list[float]
    median_s: float
    q1_s: float
    q3_s: float
    ci95_s: tuple[float, float]
    peak_bytes: int | None = None
    info: str | None = None
    speedup: float | None = None
    speedup_ci95: tuple[float, float] | None = None
    efficiency: float | None = None
    gap_per_vertex_us: float | None = None  # (median - lower bound) / vertices: what a schedule did not recover
    loops: int = 1  # units back to back in each timed run (times_s are per unit)
    invalid: str | None = None  # why its efficiency and gap are not figures a run can give (shown as such)
    _processes: list[list[float]] = field(default_factory=list, repr=False)

    @classmethod
    def from_processes(cls, executor: str, exact: bool, processes: list[dict]) -> Result:
        runs = [list(p["times_s"]) for p in processes]
        times = [t for r in runs for t in r]
        q1, med, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        boot = _bootstrap(runs, np.random.default_rng(0))
        peak = next((p.get("peak_bytes") for p in processes if p.get("peak_bytes") is not None), None)
        info = next((p.get("info") for p in processes if p.get("info")), None)
        return cls(executor, exact, times, [statistics.median(r) for r in runs], statistics.median(times), q1, q3,
                   (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))), peak, info,
                   loops=max(p.get("loops", 1) for p in processes), _processes=runs)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("_processes")
        return out


@dataclass
class Report:
    """The figures of one benchmark (`vf.benchmark`). `print(report)` shows the table."""

    workload: str
    mode: str
    vertices: int
    results: list[Result]
    bound: dict
    load: dict
    machine: dict
    processes: int
    runs: int
    recipe: dict | None = None
    family: str | None = None
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    command: str | None = None

    @classmethod
    def make(cls, workload, results: list[Result], bound: dict, load: dict, machine: dict, processes: int,
             runs: int) -> Report:
        report = cls(workload.name, workload.mode, workload.vertices, results, bound, load, machine, processes,
                     runs, workload.recipe, workload.family, dict(workload.params))
        report._summarize()
        return report

    # -- figures -----------------------------------------------------------------------
    def result(self, executor: str) -> Result:
        for r in self.results:
            if r.executor == executor:
                return r
        raise KeyError(f"no executor {executor!r} in this report; it has {', '.join(r.executor for r in self.results)}")

    def _summarize(self) -> None:
        seq = self.result("sequential")
        ideal = self.bound["ideal_s"]
        rng = np.random.default_rng(1)
        seq_boot = _bootstrap(seq._processes, rng)
        for r in self.results:
            r.speedup = seq.median_s / r.median_s
            boot = seq_boot / _bootstrap(r._processes, rng)
            r.speedup_ci95 = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
            if r.exact:  # the bound is over schedules of this graph's vertices: peers are other programs
                r.efficiency = ideal / r.median_s
                r.gap_per_vertex_us = (r.median_s - ideal) / max(self.vertices, 1) * 1e6
                if r.efficiency > 1.0:
                    r.invalid = ("faster than the lower bound, which no schedule can beat: noise in the bound or "
                                 "the timing")
            cores = self.bound.get("cores", 1)
            if r.speedup > cores * 1.02 and not self.bound.get("awaited_s") and r.invalid is None:
                r.invalid = f"{r.speedup:.2f}x on {cores} cores: more than the cores allow for work that waits for none"
        self.warnings = self._warnings()
        self.advice = self._advice()

    def _warnings(self) -> list[str]:
        out = []
        if self.load.get("busy"):
            out.append("the machine was busy (" + "; ".join(self.load["reasons"]) + "): these figures are "
                       "unreliable; rerun on an idle machine")
        for r in self.results:
            meds = r.process_medians_s
            if len(meds) > 1 and (max(meds) - min(meds)) / r.median_s > 0.15:
                out.append(f"{r.executor}: its processes disagree by {(max(meds) - min(meds)) / r.median_s:.0%} "
                           "(a busy or noisy machine); compare its figures with care")
            if r.invalid:
                out.append(f"{r.executor}: its figures are marked invalid ({r.invalid}); rerun on an idle machine")
        return out

    def _advice(self) -> list[str]:
        out = []
        seq = self.result("sequential")
        bound = self.bound
        parallel_room = seq.median_s / bound["ideal_s"] if bound["ideal_s"] > 0 else 1.0
        for r in self.results:
            if not r.executor.startswith("actor"):
                continue
            ran = (r.info or "").split(":")[0]
            low, high = r.speedup_ci95
            if ran == "tape":
                why = (r.info or "").split(": ", 1)[-1].removeprefix("measured: ")
                out.append(f"{r.executor}: ran as one actor (the tape), since {why}")
            elif low > 1.0 and bound.get("awaited_s"):
                out.append(f"{r.executor}: {r.speedup:.2f}x the tape ({r.efficiency:.0%} of the lower bound): "
                           "vertices awaited at once (an await holds no thread, so waits overlap beyond the "
                           f"{bound['cores']} cores; the tape awaits them one after another)")
            elif r.invalid:
                continue  # its figures say nothing a run can give
            elif low > 1.0:
                out.append(f"{r.executor}: {r.speedup:.2f}x the tape ({r.efficiency:.0%} of the lower bound): "
                           "independent expensive vertices ran at once")
                if r.efficiency < 0.75:
                    out.append(f"{r.executor}: short of the bound by {1 - r.efficiency:.0%}: vertices running at "
                               "once slow each other (memory bandwidth, BLAS turns) and wait for hand-offs; "
                               "`vertexflow trace SCRIPT --compare` shows it vertex by vertex")
            elif high < 1.0:
                if parallel_room < 1.15:
                    out.append(f"{r.executor}: slower than the tape, with little to run at once: the lower bound is "
                               f"{1 / parallel_room:.0%} of the tape's time (the critical path or the work per "
                               "core dominates); schedule='auto' keeps the tape for such graphs")
                else:
                    out.append(f"{r.executor}: slower than the tape although the bound leaves room "
                               f"({1 / parallel_room:.0%} of the tape's time): hand-offs and vertices slowing each "
                               "other cost more than the overlap gains; try threads=, blas='share', or schedule='tape'")
            else:
                out.append(f"{r.executor}: no difference from the tape beyond noise (speedup {low:.2f}-{high:.2f}x)")
            by_hand = next((p for p in self.results if p.executor == "numpy-threads"), None)
            if by_hand is not None and ran != "tape" and by_hand.speedup > 0:
                out.append(f"{r.executor}: {r.speedup:.2f}x the tape, {r.speedup / by_hand.speedup:.0%} of the "
                           f"speedup of the same ufuncs on a thread per core by hand ({by_hand.speedup:.2f}x)")
            if ran != "tape" and not bound.get("awaited_s") and bound.get("vertex_us_median", 1e9) < 30:
                out.append(f"{r.executor}: vertices take a median {bound['vertex_us_median']:.1f} us, less "
                           "than a thread hand-off (~30 us): raise heavy_flops so more of them fuse, or keep "
                           "schedule='tape'")
        blas_threads = [b.get("num_threads") for b in self.machine.get("blas", [])]
        if any(t and t > 1 for t in blas_threads) and self.mode in ("backward", "stream"):
            out.append("BLAS runs each product with all cores, so parallel products take turns (results stay "
                       "bitwise equal); ActorExecutor(blas='share') splits the cores instead, at the price of "
                       "last-bit rounding differences")
        pinned = self.machine.get("OPENBLAS_CORETYPE")
        if pinned:
            cpu = " on a CPU with AVX-512" if "avx512f" in self.machine.get("vector_extensions", []) else ""
            out.append(f"OPENBLAS_CORETYPE={pinned} pins OpenBLAS to its {pinned} kernels{cpu}: numpy's matrix "
                       "products (so vertexflow's and dask's) may run slower than this CPU allows, while peers "
                       "with kernels of their own (onnxruntime) are not held back; unset it to compare at the "
                       "CPU's best")
        return list(dict.fromkeys(out))

    # -- forms ---------------------------------------------------------------------------
    COLUMNS = ["executor", "median", "IQR", "95% CI", "vs sequential", "efficiency", "gap/vertex", "peak MB"]

    def rows(self) -> list[list[str]]:
        out = []
        for r in self.results:
            low, high = r.speedup_ci95
            out.append([
                r.executor,
                _ms(r.median_s),
                f"{_ms(r.q1_s)}-{_ms(r.q3_s)}",
                f"{_ms(r.ci95_s[0])}-{_ms(r.ci95_s[1])}",
                f"{r.speedup:.2f}x [{low:.2f}-{high:.2f}]" + (" (invalid)" if r.invalid else ""),
                "-" if r.efficiency is None else "invalid" if r.invalid else f"{100 * r.efficiency:.0f}%",
                "-" if r.gap_per_vertex_us is None else "invalid" if r.invalid else f"{r.gap_per_vertex_us:.1f} us",
                "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}",
            ])
        return out

    def header(self) -> list[str]:
        b, m = self.bound, self.machine
        return [
            f"{self.workload}: {self.mode}, {self.vertices} vertices; {self.processes} "
            f"process{'es' if self.processes != 1 else ''} x {self.runs} runs per executor"
            + (f" (a run: {max(r.loops for r in self.results)} units or fewer back to back)"
               if any(r.loops > 1 for r in self.results) else "") + f"; {m['cores']} cores",
            f"lower bound {_ms(b['ideal_s'])} = max(critical path {_ms(b['critical_path_s'])}"
            + (" with its awaits" if b.get("awaited_s") else "")
            + f", work {_ms(b['total_work_1_thread_s'])} / {b['cores']} cores)",
        ]

    def __str__(self) -> str:
        lines = self.header() + ["", _table(self.COLUMNS, self.rows())]
        for r in self.results:
            if r.info:
                lines.append(f"{r.executor} ran as {r.info}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"- {a}" for a in self.advice]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "workload": self.workload,
            "family": self.family,
            "params": self.params,
            "mode": self.mode,
            "vertices": self.vertices,
            "recipe": self.recipe,
            "command": self.command,
            "machine": self.machine,
            "load": self.load,
            "processes": self.processes,
            "runs": self.runs,
            "bound": self.bound,
            "results": [r.as_dict() for r in self.results],
            "warnings": self.warnings,
            "advice": self.advice,
        }

    def save(self, path: str) -> str:
        """Write the report as JSON (schema vertexflow.bench/2)."""
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=1)
        return path

    def save_pyperf(self, path: str) -> str:
        """Write the timings as a pyperf suite, for `python -m pyperf compare_to a.json b.json`."""
        save_pyperf([self], path)
        return path

    def markdown(self) -> str:
        head = ["| " + " | ".join(self.COLUMNS) + " |", "|---|" + "---:|" * (len(self.COLUMNS) - 1)]
        return "\n".join([f"**{self.workload}** ({self.mode}, {self.vertices} vertices)", "", *head,
                          *("| " + " | ".join(r) + " |" for r in self.rows())]) + "\n"


def save_pyperf(reports: Sequence[Report], path: str) -> None:
    import pyperf

    benchmarks = []
    for report in reports:
        for r in report.results:
            runs = [pyperf.Run(values, metadata={"name": f"{report.workload} {r.executor}", "loops": r.loops,
                                                 "unit": "second"}, collect_metadata=False)
                    for values in r._processes if len(values) >= 1]
            benchmarks.append(pyperf.Benchmark(runs))
    pyperf.BenchmarkSuite(benchmarks).dump(path, replace=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.2f} s"


def _table(columns: list[str], body: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in body)])


# -- suites of graph families ------------------------------------------------------------
SUITES: dict[str, list[tuple[str, dict]]] = {
    "quick": [
        ("wide", dict(branches=2, depth=6)),
        ("wide", dict(branches=8, depth=6)),
        ("deep", dict(length=12)),
        ("inception", dict(blocks=3, width=4)),
        ("random_dag", dict(vertices=60)),
        ("fine_grained", dict(vertices=1000)),
        ("mlp_ensemble", dict(members=4, batches=50)),
        ("mlp_train", dict(batch=100)),
        ("cnn_block", dict(batch=16)),
        ("waiting", dict(vertices=64, seconds=0.02)),
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
    "distributed": [
        ("chain", dict(vertices=3000, batches=120)),
        ("wide", dict(branches=2, depth=6)),
        ("mlp_ensemble", dict(members=2, batches=50)),
    ],
}
# The executors a suite compares when --executor is not given, and the peers it adds by name.
SUITE_EXECUTORS = {"distributed": ["sequential", "actor", "ray", "dask-distributed"]}
SUITE_HELP = {
    "quick": "every graph family once, at its usual size (a few minutes)",
    "full": "the families at several widths and sizes (about half an hour)",
    "distributed": "a pipelined chain and two families: local executors against RayExecutor (2 processes) "
                   "and Dask distributed (2 worker processes); needs the ray extra and distributed",
}

# `--tiny`: the same workloads shrunk to run in seconds (a smoke test); vertex counts are capped.
TINY: dict[str, dict] = {
    "wide": dict(depth=2, rows=32, cols=64),
    "deep": dict(length=3, rows=32, cols=64),
    "inception": dict(blocks=1, width=2, rows=32, cols=64),
    "random_dag": dict(vertices=10, rows=16, cols=32),
    "fine_grained": dict(size=8),
    "mlp_ensemble": dict(members=2, batch=8, hidden=32, batches=4),
    "mlp_train": dict(batch=8),
    "cnn_block": dict(batch=2, channels=2, size=8),
    "chain": dict(vertices=60, size=8, batches=6),
    "waiting": dict(vertices=8, seconds=0.002, size=8),
}


def shrink(family: str, params: dict) -> dict:
    out = dict(params, **TINY.get(family, {}))
    if family == "fine_grained":
        out["vertices"] = max(10, params.get("vertices", 1000) // 20)
    if family == "wide":
        out["branches"] = min(params.get("branches", 8), 4)
    return out


def suite_plan(suite: str, families: Sequence[str] | None = None, sizes: dict | None = None,
               tiny: bool = False) -> list[tuple[str, dict]]:
    plan = [(f, dict(p)) for f, p in SUITES[suite] if not families or f in families]
    if families and not plan:
        plan = [(f, {}) for f in families]
    if tiny:
        plan = [(f, shrink(f, p)) for f, p in plan]
    plan = [(f, dict(p, **(sizes or {}))) for f, p in plan]
    # Sizes given may make two of a suite's configurations one: run it once.
    return list({repr((f, sorted(p.items()))): (f, p) for f, p in plan}.values())


@dataclass
class SuiteReport:
    suite: str
    tiny: bool
    reports: list[Report]
    seconds: float
    command: str | None = None

    def as_dict(self) -> dict:
        return {"schema": SUITE_SCHEMA, "suite": self.suite, "tiny": self.tiny, "command": self.command,
                "seconds": self.seconds, "machine": self.reports[0].machine if self.reports else {},
                "reports": [r.as_dict() for r in self.reports]}

    def save(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=1)
        return path

    def save_pyperf(self, path: str) -> str:
        save_pyperf(self.reports, path)
        return path

    def __str__(self) -> str:
        return "\n\n".join(str(r) for r in self.reports)

    def markdown(self) -> str:
        m = self.reports[0].machine if self.reports else {}
        blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, {b['architecture']})"
                         for b in m.get("blas", [])) or "unknown"
        head = [f"Suite `{self.suite}`, on {m.get('cores')} cores, Python {m.get('python')}, numpy {m.get('numpy')}, "
                f"BLAS: {blas}."]
        if self.command:
            head.append(f"Command: `{self.command}`")
        return "\n".join(head + [""] + [r.markdown() for r in self.reports])

    def plot(self, path: str) -> str | None:
        """Speedup against graph width (wide family) and time above the bound per vertex against vertex count."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        _series(left, [r for r in self.reports if r.family == "wide"], "branches", "speedup")
        left.axhline(1.0, color="#888", lw=0.8, ls="--")
        left.set(xlabel="independent branches (wide graph)", ylabel="speedup over sequential",
                 title="Speedup against graph width")
        _series(right, [r for r in self.reports if r.family == "fine_grained"], "vertices", "gap_per_vertex_us")
        right.set(xlabel="vertices (fine-grained graph)", ylabel="time over the bound per vertex (us)",
                  title="Time above the bound per vertex", xscale="log")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.suptitle(f"vertexflow bench --suite {self.suite}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _series(ax, reports: list[Report], x_key: str, y_key: str) -> None:
    by_executor: dict[str, list[tuple]] = {}
    for report in reports:
        for r in report.results:
            if getattr(r, y_key) is not None and not r.invalid:
                interval = r.speedup_ci95 if y_key == "speedup" else None
                by_executor.setdefault(r.executor, []).append((report.params.get(x_key, 0), getattr(r, y_key),
                                                              interval))
    for name, points in sorted(by_executor.items()):
        points.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if all(p[2] is not None for p in points):  # the 95% interval of each point, as error bars
            below = [max(y - p[2][0], 0.0) for y, p in zip(ys, points)]
            above = [max(p[2][1] - y, 0.0) for y, p in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=f"{name} (95% CI)")
        else:
            ax.plot(xs, ys, marker="o", label=name)


def run_suite(suite: str = "quick", families: Sequence[str] | None = None, threads: int | None = None,
              processes: int = 3, runs: int = 5, sizes: dict | None = None, tiny: bool = False,
              executors: Sequence[str] = ("sequential", "actor"), peers: bool = True,
              progress: Callable[[str], None] | None = None) -> SuiteReport:
    """Benchmark every workload of a suite (each through `vf.benchmark`)."""
    import time

    from .families import FAMILIES
    from .measure import benchmark

    started = time.time()
    reports = []
    for family, params in suite_plan(suite, families, sizes, tiny):
        workload = FAMILIES[family](**params)
        reports.append(benchmark(workload, executors=executors, peers=peers, threads=threads,
                                 processes=processes, runs=runs, progress=progress))
    return SuiteReport(suite, tiny, reports, time.time() - started)


def write_all(report: Report | SuiteReport, json_path: str | None, markdown_path: str | None,
              plot_path: str | None, pyperf_path: str | None = None, say: Callable[[str], None] = print) -> None:
    if json_path:
        report.save(json_path)
        say(f"JSON: {json_path}")
    if pyperf_path:
        report.save_pyperf(pyperf_path)
        say(f"pyperf JSON: {pyperf_path}  (python -m pyperf compare_to OLD.json {pyperf_path})")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(report.markdown())
        say(f"Markdown: {markdown_path}")
    if plot_path:
        if not isinstance(report, SuiteReport):
            report = SuiteReport("custom", False, [report], 0.0)
        done = report.plot(plot_path)
        say(f"plot: {plot_path}" if done else "plot skipped: matplotlib is not installed (pip install -e '.[bench]')")
