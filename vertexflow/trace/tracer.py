"""Spans: one record per vertex per step and phase, as executors run.

An executor given a tracer calls `tracer.now()` around each vertex and
`tracer.record(...)` once it is done; without a tracer it pays one `is None`
branch per vertex. Appending to a list is atomic under the GIL, so worker
threads record without a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..graph import Node


@dataclass(frozen=True)
class Span:
    """What one vertex did in one step and phase.

    Times are seconds on `time.perf_counter`'s clock: `ready` when its inputs
    had all arrived, `start` and `end` around the computation itself.
    """

    vertex: str
    op: str
    phase: str  # "forward" or "backward"
    step: int
    lane: str  # "main", "trio", "vf-worker-N" or a CUDA stream
    ready: float
    start: float
    end: float
    input_shapes: tuple[tuple[int, ...], ...]
    inputs: tuple[str, ...]  # names of the argument vertices (data edges)

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def wait(self) -> float:
        """Time between having its inputs and starting (queueing for a lane)."""
        return self.start - self.ready


class Tracer:
    """Collects spans from any executor it is given to (or that runs inside `vf.trace()`).

    Recording keeps raw tuples (a few hundred nanoseconds a vertex); `spans`
    turns them into Span objects when they are read.

    Attributes:
        graph: the graph the last recorded vertex belongs to (for the viewer's picture).
    """

    now = staticmethod(time.perf_counter)

    def __init__(self):
        self._raw: list[tuple] = []
        self._spans: list[Span] = []
        self.graph: Any = None
        self.origin = time.perf_counter()

    def record(self, node: Node, phase: str, step: int, lane: str, ready: float, start: float, end: float, args) -> None:
        """Note that `node` ran `phase` of `step` on `lane` from start to end, ready since `ready`."""
        self._raw.append((node, phase, step, lane, ready, start, end, [getattr(a, "shape", ()) for a in args]))

    @property
    def spans(self) -> list[Span]:
        """The recorded spans, in the order they ended."""
        if len(self._spans) < len(self._raw):
            for node, phase, step, lane, ready, start, end, shapes in self._raw[len(self._spans):]:
                self.graph = node.graph
                inputs = tuple(i.name for i in node.inputs) if phase == "forward" else ()
                shapes = tuple(tuple(s) for s in shapes)
                self._spans.append(Span(node.name, node.op_name, phase, step, lane, ready, start, end, shapes, inputs))
        return self._spans

    def clear(self) -> None:
        self._raw.clear()
        self._spans.clear()
        self.origin = time.perf_counter()

    def lanes(self) -> list[str]:
        """Lanes in a stable order: the trio or main thread first, then workers by number."""

        def key(lane: str):
            head, _, tail = lane.rpartition("-")
            return (lane not in ("main", "trio"), head, int(tail) if tail.isdigit() else 0, lane)

        return sorted({s.lane for s in self.spans}, key=key)

    def save(self, path: str) -> str:
        """Write the spans as Chrome Trace Event Format JSON (Perfetto, chrome://tracing)."""
        from .chrome import write_chrome_trace

        write_chrome_trace(self, path)
        return path

    def save_html(self, path: str, title: str = "vertexflow trace") -> str:
        """Write a self-contained HTML viewer of the spans (works offline, no network)."""
        from .viewer import write_html

        write_html(self, path, title=title)
        return path

    def summary(self, cores: int | None = None):
        from .analysis import summarize

        return summarize(self, cores=cores)


_active = threading.local()


def active_tracer() -> Tracer | None:
    """The tracer of the innermost `vf.trace()` block on this thread, if any."""
    stack = getattr(_active, "stack", None)
    return stack[-1] if stack else None


@contextmanager
def trace(tracer: Tracer | None = None) -> Iterator[Tracer]:
    """`with vf.trace() as t: ex.run(...)`: every executor run in the block records into t."""
    tracer = tracer or Tracer()
    stack = getattr(_active, "stack", None)
    if stack is None:
        stack = _active.stack = []
    stack.append(tracer)
    try:
        yield tracer
    finally:
        stack.pop()
