"""Benchmarks: graph families, the measurement of executors on them, and reports."""

from .families import FAMILIES, Workload

__all__ = ["FAMILIES", "Workload"]
