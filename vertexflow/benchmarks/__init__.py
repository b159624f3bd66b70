"""Benchmarks: workloads (graph families, scripts, ONNX files), their timing in fresh processes, reports.

`vf.benchmark(...)` (measure.py) is the one way in: the built-in families, the
demo, `vertexflow bench` and a user's own graph all go through it.
"""

from .families import FAMILIES
from .measure import benchmark
from .report import Report, SuiteReport, run_suite
from .workload import Workload

__all__ = ["FAMILIES", "Report", "SuiteReport", "Workload", "benchmark", "run_suite"]
