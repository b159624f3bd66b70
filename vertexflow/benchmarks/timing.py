"""Timing in one process: configurations take turns in short blocks, so noise hits them alike.

`interleaved` is the one timing loop every benchmark here uses: each round,
every configuration runs once untimed (its first run after another's work
meets cold caches and allocator arenas), then `inner` timed runs. Whole
blocks alternate rather than single runs for that reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


def interleaved(runners: Mapping[str, Callable[[], object]], rounds: int, inner: int = 3,
                after_block: Callable[[str], None] | None = None,
                after_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """{name: seconds of every timed run} for each runner, timed in alternating blocks.

    Args:
        rounds: blocks per runner.
        inner: timed runs per block (after one untimed run).
        after_block: called with the runner's name after each of its blocks (e.g. to clear a tracer).
        after_round: called with the round's index after each round (e.g. a progress bar).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name, fn in runners.items():
            fn()
            for _ in range(inner):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            if after_block is not None:
                after_block(name)
        if after_round is not None:
            after_round(r)
    return times


@dataclass(frozen=True)
class Spread:
    """The median of timed runs and their quartiles, in seconds."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, times: list[float]) -> Spread:
        if len(times) < 2:
            return cls(times[0], times[0], times[0])
        q1, _, q3 = statistics.quantiles(times, n=4)
        return cls(statistics.median(times), q1, q3)
