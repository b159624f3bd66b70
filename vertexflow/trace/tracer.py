"""Spans, waits and counters, as executors run; one tracer can hold many executors and runs.

An executor given a tracer (or running inside `vf.trace()`) records into a
`StepTrace`: the tracer, the executor's `Track` (one process track per
executor in the Chrome JSON), the run (one executor call: a run, a backward,
a stream) and the step within it. For each vertex and phase it records when
the vertex was *ready* (its inputs there), when it *acquired* what it waited
for (a worker, the BLAS lock, a stream), when it *started* computing and
*ended*, and its thread's CPU time; waits are recorded as events of their
own and are never part of a span's work. Executors also record their own
doings (wiring a network, hand-offs), counters (steps in flight, busy
workers, queue depth, live buffer bytes) and one slice per step.

Recording keeps raw tuples (a few hundred nanoseconds a vertex); `spans`
turns them into Span objects when they are read. Appending to a list is
atomic under the GIL, so worker threads record without a lock. Without a
tracer an executor pays one `is None` branch per vertex.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..graph import Node


@dataclass(slots=True)
class Span:
    """What one vertex did in one step and phase.

    Times are seconds on `time.perf_counter`'s clock: `ready` when its inputs
    had all arrived, `acquired` when it had what it waited for besides (a worker
    thread, the BLAS lock, a stream), `start` and `end` around the computation
    itself; `cpu` its thread's CPU time over [start, end].
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
    acquired: float = 0.0
    cpu: float | None = None
    run: int = 0  # which executor call, unique in the tracer
    track: int = 0  # which executor (its process in the Chrome JSON)
    shape: tuple[int, ...] = ()  # the output's
    dtype: str = ""
    flops: float | None = None  # the op's own estimate
    fused: str | None = None  # the fused group it ends, if any

    @property
    def duration(self) -> float:
        """The time it computed (no waits)."""
        return self.end - self.start

    @property
    def wait(self) -> float:
        """Time between having its inputs and starting (queueing for a worker, the BLAS lock)."""
        return self.start - self.ready

    @property
    def name(self) -> str:
        """How trace views name it: backward spans apart from forward ones."""
        return self.vertex if self.phase == "forward" else f"{self.vertex} (backward)"

    @property
    def bytes(self) -> int:
        return _nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class Wait:
    """Time a vertex (or an actor) spent waiting, apart from any span's work."""

    what: str  # "worker", "BLAS lock", "input", "gradient", "stream"
    vertex: str
    track: int
    run: int
    step: int
    lane: str | None  # the thread that was blocked, or None when nothing was (a task waiting in trio)
    start: float
    end: float


@dataclass(frozen=True)
class Event:
    """Something an executor did itself (wiring a network, a hand-off), on a lane."""

    name: str
    track: int
    lane: str
    start: float
    end: float
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Counter:
    """One sample of a counter: `group` names the track family, `series` the line ("workers", "busy")."""

    group: str
    series: str
    track: int
    time: float
    value: float

    @property
    def name(self) -> str:
        return f"{self.group} {self.series}"


@dataclass(frozen=True)
class StepSlice:
    """One step of a run, from its submission to its results (steps of a stream overlap)."""

    track: int
    run: int
    step: int
    start: float
    end: float


@dataclass
class Track:
    """One executor in a trace: its process track in the Chrome JSON."""

    id: int
    label: str
    options: dict

    @property
    def pid(self) -> int:
        return self.id


class StepTrace:
    """Where one step's spans go: the tracer, the executor's track, the run, the step."""

    __slots__ = ("tracer", "track", "run", "step")

    def __init__(self, tracer: Tracer, track: int, run: int, step: int):
        self.tracer, self.track, self.run, self.step = tracer, track, run, step

    def record(self, node: Node, phase: str, lane: str, ready: float, acquired: float, start: float, end: float,
               cpu: float | None, args, op=None, out_shape=None) -> None:
        self.tracer._raw.append((node, phase, self.track, self.run, self.step, lane, ready, acquired, start, end, cpu,
                                 tuple([getattr(a, "shape", ()) for a in args]), op, out_shape))

    def wait(self, what: str, vertex: str, lane: str | None, start: float, end: float) -> None:
        self.tracer.waits.append(Wait(what, vertex, self.track, self.run, self.step, lane, start, end))

    def event(self, name: str, lane: str, start: float, end: float, **args) -> None:
        self.tracer.events.append(Event(name, self.track, lane, start, end, args))

    def counter(self, group: str, series: str, value: float, at: float | None = None) -> None:
        self.tracer.counters.append(Counter(group, series, self.track, time.perf_counter() if at is None else at,
                                            value))

    def slice(self, start: float, end: float) -> None:
        self.tracer.slices.append(StepSlice(self.track, self.run, self.step, start, end))


class TeeStepTrace:
    """A step recording into its own tracer and into the tracers of enclosing `vf.trace()` blocks."""

    def __init__(self, own: StepTrace, others: list[StepTrace]):
        self.own, self.others = own, others
        self.tracer, self.track, self.run, self.step = own.tracer, own.track, own.run, own.step

    def record(self, *args, **kwargs) -> None:
        self.own.record(*args, **kwargs)
        for other in self.others:
            other.record(*args, **kwargs)

    def wait(self, *args) -> None:
        self.own.wait(*args)
        for other in self.others:
            other.wait(*args)

    def event(self, *args, **kwargs) -> None:
        self.own.event(*args, **kwargs)
        for other in self.others:
            other.event(*args, **kwargs)

    def counter(self, *args) -> None:
        self.own.counter(*args)
        for other in self.others:
            other.counter(*args)

    def slice(self, *args) -> None:
        self.own.slice(*args)
        for other in self.others:
            other.slice(*args)


class Tracer:
    """Collects spans from any executor it is given to (or that runs inside `vf.trace()`).

    Attributes:
        graph: the graph the last recorded vertex belongs to (for the viewer's picture).
        tracks: {track id: Track}, one per executor that recorded.
        waits, events, counters, slices: what the executors recorded besides spans.
        origin, wall_origin: the same instant on perf_counter's clock and as Unix time,
            so traces line up with other tools' (PyTorch's, viztracer's).
    """

    now = staticmethod(time.perf_counter)

    def __init__(self):
        self._raw: list[tuple] = []
        self._spans: list[Span] = []
        self.graph: Any = None
        self.origin = time.perf_counter()
        self.wall_origin = time.time()
        self.tracks: dict[int, Track] = {}
        self._track_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runs = itertools.count(1)
        self._lock = threading.Lock()
        self.waits: list[Wait] = []
        self.events: list[Event] = []
        self.counters: list[Counter] = []
        self.slices: list[StepSlice] = []
        self.metadata: dict = _machine_metadata()
        # (vertex, phase, op, input shapes, output shape) -> what a span of it shows besides
        # its times, worked out once: spans of one vertex repeat from step to step.
        self._fixed: dict[tuple, tuple] = {}
        self._enclosing_runs: dict[int, dict[int, int]] = {}
        self._remote_tracks: dict[tuple, int] = {}  # (executor, partition, pid) -> track

    # -- what executors call -------------------------------------------------------------
    def track(self, executor) -> int:
        """The track of an executor (made at its first span): one process track per executor."""
        found = self._track_of.get(executor)
        if found is None:
            with self._lock:
                found = self._track_of.get(executor)
                if found is None:
                    found = len(self.tracks) + 1
                    options = executor.trace_options() if hasattr(executor, "trace_options") else {}
                    label = type(executor).__name__ + "".join(f" {k}={v}" for k, v in options.items())
                    self.tracks[found] = Track(found, f"{label} (#{found})", options)
                    self._track_of[executor] = found
        return found

    def step_trace(self, executor, step: int = 0, run: int | None = None) -> StepTrace:
        """Where one step of `executor` records; a new run unless `run` is given.

        When this tracer is an open `vf.trace()` block's, the step records into every other block
        open for this thread too (so `vertexflow trace script.py` keeps what the script traced
        itself, and overlapping blocks each get the steps made while they are open).
        """
        own = StepTrace(self, self.track(executor), next(self._runs) if run is None else run, step)
        open_now = open_tracers()
        if self not in open_now:
            return own
        enclosing = [t for t in open_now if t is not self]
        if not enclosing:
            return own
        runs = self._enclosing_runs.setdefault(own.run, {})
        others = []
        for outer in enclosing:
            if id(outer) not in runs:
                runs[id(outer)] = outer.new_run()
            others.append(StepTrace(outer, outer.track(executor), runs[id(outer)], step))
        return TeeStepTrace(own, others)

    def new_run(self) -> int:
        return next(self._runs)

    def record(self, node: Node, phase: str, step: int, lane: str, ready: float, start: float, end: float,
               args) -> None:
        """A span recorded by hand (outside any executor): track 0, run 0."""
        self._raw.append((node, phase, 0, 0, step, lane, ready, start, start, end, None,
                          tuple([tuple(getattr(a, "shape", ())) for a in args]), None, None))

    def merge_remote(self, spans: list[Span], events: list[Event], transfers: list[tuple], *, label: str,
                     offset: float, run: int, step: int, key: tuple, steps: list[int] | None = None,
                     waits=(), producer_waits=(), slices=(), counters=(), step_of: dict | None = None) -> int:
        """What another process recorded (a Ray partition), on a track of its own.

        Times move by `offset` onto this process's perf_counter clock; everything takes this
        tracer's `run`, and `step` unless `steps` (each span's step) or `step_of` (each kind's,
        for a call that ran several steps) says otherwise. `transfers` are (name, start, end,
        bytes) of values received from other processes (the bytes moving), shown as events on
        the lane "transfers"; `producer_waits` (what, names, start, end) the time before that,
        waiting for the producing partition; `waits` (what, vertex, lane, start, end), `slices`
        (start, end) and `counters` (group, series, time, value) are its executors' own.
        Returns the track.
        """
        step_of = step_of or {}

        def step_at(kind: str, k: int) -> int:
            found = step_of.get(kind)
            return found[k] if found and k < len(found) else step
        import dataclasses

        with self._lock:
            found = self._remote_tracks.get(key)
            if found is None:
                found = self._remote_tracks[key] = len(self.tracks) + 1
                self.tracks[found] = Track(found, f"{label} (#{found})", {"process": label})
        for k, span in enumerate(spans):
            self._raw.append(dataclasses.replace(
                span, track=found, run=run, step=steps[k] if steps and k < len(steps) else step,
                ready=span.ready + offset, start=span.start + offset,
                end=span.end + offset, acquired=(span.acquired + offset) if span.acquired else span.acquired))
        for event in events:
            self.events.append(Event(event.name, found, event.lane, event.start + offset, event.end + offset,
                                     dict(event.args)))
        for name, start, end, size in transfers:
            self.events.append(Event(name, found, "transfers", start + offset, end + offset, {"bytes": size}))
        for what, names, start, end in producer_waits:
            self.waits.append(Wait(what, names, found, run, step, None, start + offset, end + offset))
        for k, (what, vertex, lane, start, end) in enumerate(waits):
            self.waits.append(Wait(what, vertex, found, run, step_at("waits", k), lane, start + offset, end + offset))
        for k, (start, end) in enumerate(slices):
            self.slices.append(StepSlice(found, run, step_at("slices", k), start + offset, end + offset))
        for group, series, at, value in counters:
            self.counters.append(Counter(group, series, found, at + offset, value))
        return found

    # -- what readers see ----------------------------------------------------------------
    @property
    def spans(self) -> list[Span]:
        """The recorded spans, in the order they ended."""
        if len(self._spans) < len(self._raw):
            for raw in self._raw[len(self._spans):]:
                self._spans.append(_span(raw, self))
        return self._spans

    def clear(self) -> None:
        self._raw.clear()
        self._spans.clear()
        self._fixed.clear()  # keyed by ids of vertices the records held
        self.waits.clear()
        self.events.clear()
        self.counters.clear()
        self.slices.clear()
        self.origin = time.perf_counter()
        self.wall_origin = time.time()

    def lanes(self, track: int | None = None, everything: bool = False) -> list[str]:
        """The lanes vertices ran on (with `everything`, also those of the executor's own events),
        in a stable order: the trio or main thread first, then workers by number."""
        names = {s.lane for s in self.spans if track is None or s.track == track}
        if everything:
            names |= {e.lane for e in self.events if track is None or e.track == track}
            names |= {w.lane for w in self.waits if w.lane is not None and (track is None or w.track == track)}
        return sorted(names, key=_lane_key)

    def track_ids(self) -> list[int]:
        """The tracks with something recorded, in order (0: spans recorded by hand)."""
        used = {s.track for s in self.spans} | {e.track for e in self.events}
        return sorted(used)

    def track_label(self, track: int) -> str:
        return self.tracks[track].label if track in self.tracks else "vertexflow"

    # save, save_html, summary, compare and load are attached by the renderers' package
    # (trace/__init__.py): recording here never imports what reads it.


_ITEMSIZE: dict[str, int] = {}


def _nbytes(shape: tuple, dtype: str) -> int:
    if not dtype:
        return 0
    size = _ITEMSIZE.get(dtype)
    if size is None:
        import numpy as np

        size = _ITEMSIZE[dtype] = np.dtype(dtype).itemsize
    n = 1
    for d in shape:
        n *= d
    return n * size


def _lane_key(lane: str):
    head, _, tail = lane.rpartition("-")
    return (lane not in ("main", "trio"), head, int(tail) if tail.isdigit() else 0, lane)


class _Named:
    """What a span refers to by name once the live Node is gone (a trace read back from JSON)."""

    def __init__(self, name: str, op_name: str = "", inputs=()):
        self.name, self.op_name, self.inputs = name, op_name, inputs


def _span(raw: tuple | Span, tracer: Tracer) -> Span:
    if type(raw) is Span:  # merged from another process, made there
        return raw
    node, phase, track, run, step, lane, ready, acquired, start, end, cpu, shapes, op, out_shape = raw
    key = (id(node), phase, id(op), shapes, out_shape)
    fixed = tracer._fixed.get(key)
    if fixed is None:
        fixed = tracer._fixed[key] = _fixed_part(node, phase, shapes, op, out_shape, tracer)
    name, op_name, shapes, inputs, out_shape, dtype, flops, fused = fixed
    return Span(name, op_name, phase, step, lane, ready, start, end, shapes, inputs, acquired, cpu, run, track,
                out_shape, dtype, flops, fused)


def _fixed_part(node, phase: str, shapes: tuple, op, out_shape, tracer: Tracer) -> tuple:
    """What a span shows besides its times and step: the same for every step with these shapes."""
    graph = getattr(node, "graph", None)
    if graph is not None:
        tracer.graph = graph
    shapes = tuple(tuple(s) for s in shapes)
    inputs = tuple(i.name for i in node.inputs) if phase == "forward" else ()
    spec = getattr(node, "spec", None)
    flops = None
    used = op if op is not None else getattr(node, "op", None)
    if used is not None and phase == "forward" and op is None:
        from ..graph import Spec

        try:
            flops = float(used.cost(*(Spec(s, i.dtype) for s, i in zip(shapes, node.inputs))))
        except Exception:  # noqa: BLE001 - an estimate only: a user op's cost may not take these
            flops = None
    if out_shape is None and spec is not None and phase == "forward":
        out_shape = tuple(-1 if d is None else d for d in spec.shape)
    return (node.name, node.op_name, shapes, inputs, tuple(out_shape or ()), "" if spec is None else str(spec.dtype),
            flops, None if op is None else repr(op))


def _machine_metadata() -> dict:
    import platform

    from ..machine import cores

    out = {"cores": cores(), "python": platform.python_version(), "pid": os.getpid()}
    try:
        from ..machine import blas_info

        out["blas"] = blas_info()
    except Exception:  # noqa: BLE001 - threadpoolctl missing or failing: the trace does without
        out["blas"] = []
    return out


# The open `vf.trace()` blocks: those that record every thread (the default) and, per thread, those
# kept to the thread that opened them; each with the order it was opened in.
_blocks_lock = threading.Lock()
_everywhere: list[tuple[int, Tracer]] = []
_here = threading.local()
_opened = itertools.count()


def open_tracers() -> list[Tracer]:
    """The tracers of the `vf.trace()` blocks that record a call made on this thread, oldest first."""
    if not _everywhere and not getattr(_here, "stack", None):
        return []  # every untraced call asks: no lock taken when no block is open
    with _blocks_lock:
        blocks = list(_everywhere)
    blocks += getattr(_here, "stack", [])
    blocks.sort(key=lambda b: b[0])
    found: list[Tracer] = []
    for _, tracer in blocks:
        if tracer not in found:
            found.append(tracer)
    return found


def active_tracer() -> Tracer | None:
    """The tracer an executor without one of its own records into: the innermost open `vf.trace()` block
    that records this thread (the steps are also copied into the other open blocks)."""
    found = open_tracers()
    return found[-1] if found else None


@contextmanager
def trace(tracer: Tracer | None = None, *, threads: str = "all") -> Iterator[Tracer]:
    """`with vf.trace() as t: ex.run(...)`: every executor run while the block is open records into t.

    Args:
        threads: "all" (default): executors running on any thread of the process (a server's
            worker threads, an executor's own host); "current": only calls made on this thread.
            Blocks nest and overlap: a step records into every block open for it.
    """
    if threads not in ("all", "current"):
        raise ValueError(f'trace(threads=...) takes "all" or "current", got {threads!r}')
    tracer = tracer or Tracer()
    entry = (next(_opened), tracer)
    if threads == "all":
        with _blocks_lock:
            _everywhere.append(entry)
    else:
        stack = getattr(_here, "stack", None)
        if stack is None:
            stack = _here.stack = []
        stack.append(entry)
    try:
        yield tracer
    finally:
        if threads == "all":
            with _blocks_lock:
                _everywhere.remove(entry)
        else:
            _here.stack.remove(entry)
