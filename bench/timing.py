"""Shared by the bench scripts: calls timed in turn within one process.

`interleaved_medians(calls, runs)` warms each call up, then times every call once
per round for `runs` rounds (so a slow moment of the machine falls on all of
them alike) and gives each call's median in seconds.
"""

from __future__ import annotations

import statistics
import time


def interleaved_medians(calls: dict, runs: int, warmup: int = 20) -> dict[str, float]:
    """{name: median seconds} of each call in `calls` ({name: callable}), timed in turn."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
