"""Stream runtimes: where planned vertices are launched, and how events order them.

Both runtimes take the same calls, in launch (topological) order:
`launch(stream, fn, waits, record)` queues `fn` on a stream after waiting for
the events in `waits`, then records event `record`; `synchronize()` waits for
every stream. `CupyStreams` does this with CUDA streams and events (launching
is asynchronous; the host waits only in `synchronize`). `EmulatedStreams`
does it with one thread per stream, each running its queue in order and
honouring event waits, so the plan's event logic runs, and is tested, on a CPU.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import DeviceError

_STOP = object()


class EmulatedStreams:
    """Streams as worker threads with FIFO queues; events as threading.Events."""

    def __init__(self, streams: int, events: int):
        self.queues = [queue.SimpleQueue() for _ in range(streams)]
        self.events = [threading.Event() for _ in range(events)]
        self.errors: list[BaseException] = []
        self.spans: list[tuple[int, Any, float, float]] = []  # (stream, tag, start, end)
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"vf-stream-{i}", daemon=True)
                         for i in range(streams)]
        for t in self._threads:
            t.start()

    def _work(self, index: int) -> None:
        q = self.queues[index]
        while True:
            item = q.get()
            if item is _STOP:
                return
            fn, waits, record, tag = item
            for e in waits:
                if not self.events[e].wait(timeout=60):
                    self.errors.append(DeviceError(f"stream {index}: event {e} was never recorded"))
            start = time.perf_counter()
            try:
                fn()
            except BaseException as exc:  # reported by synchronize, after every stream has drained
                self.errors.append(exc)
            self.spans.append((index, tag, start, time.perf_counter()))
            if record is not None:
                self.events[record].set()

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None) -> None:
        self.queues[stream].put((fn, tuple(waits), record, tag))

    def synchronize(self) -> None:
        for q in self.queues:
            q.put(_STOP)
        for t in self._threads:
            t.join()
        if self.errors:
            raise self.errors[0]


class CupyStreams:
    """CUDA streams and events from cupy; kernels launched by `fn` go on the current stream."""

    def __init__(self, streams: int, events: int, timed: bool = False):
        import cupy

        self.cupy = cupy
        self.streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(streams)]
        self.events = [cupy.cuda.Event(disable_timing=True) for _ in range(events)]
        self.timed = timed
        self.marks: list[tuple[int, Any, Any, Any]] = []  # (stream, tag, start event, end event)
        self.origin = cupy.cuda.Event()
        self.origin.record()
        self.host_origin = time.perf_counter()  # so spans line up with other executors' clocks

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None) -> None:
        s = self.streams[stream]
        for e in waits:
            s.wait_event(self.events[e])
        with s:
            if self.timed:
                start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
                start.record(s)
                fn()
                end.record(s)
                self.marks.append((stream, tag, start, end))
            else:
                fn()
        if record is not None:
            self.events[record].record(s)

    def synchronize(self) -> None:
        for s in self.streams:
            s.synchronize()

    @property
    def spans(self) -> list[tuple[int, Any, float, float]]:
        """(stream, tag, start, end) in seconds since the runtime began, timed by CUDA events."""
        get = self.cupy.cuda.get_elapsed_time
        t0 = self.host_origin
        return [(i, tag, t0 + get(self.origin, a) / 1e3, t0 + get(self.origin, b) / 1e3) for i, tag, a, b in self.marks]


class CheckedStreams:
    """CUDA's launch semantics on the CPU: `fn` runs at once on the host, and every wait is checked.

    What `device="emulated-cuda"` uses in the actor executor: the same planning,
    launches, events and host synchronization as on a GPU, with numpy. A wait
    for an event that no producer has recorded since the last synchronize is
    the ordering bug a real device would turn into a race; here it raises.
    """

    def __init__(self, streams: int, events: int, timed: bool = False):
        self.recorded = [False] * events
        self.timed = timed
        self.marks: list[tuple[int, Any, float, float]] = []

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None) -> None:
        for e in waits:
            if not self.recorded[e]:
                raise DeviceError(f"stream {stream} waits for event {e}, which no producer has recorded yet")
        start = time.perf_counter()
        fn()
        if self.timed:
            self.marks.append((stream, tag, start, time.perf_counter()))
        if record is not None:
            self.recorded[record] = True

    def synchronize(self) -> None:
        self.recorded = [False] * len(self.recorded)

    @property
    def spans(self) -> list[tuple[int, Any, float, float]]:
        return list(self.marks)
