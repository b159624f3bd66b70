"""Stream runtimes: where planned vertices are launched, and how events order them.

Both runtimes take the same calls, in launch (topological) order:
`launch(stream, fn, waits, record)` queues `fn` on a stream after waiting for
the events in `waits`, then records event `record`; `synchronize()` waits for
every stream. Where several steps are in flight (the actors' streams), each
step has a slot of its own events (`slot=`), and `release(slot)` hands a
finished step's events to a later step. `CupyStreams` does this with CUDA streams and events (launching
is asynchronous; the host waits only in `synchronize`). `EmulatedStreams`
does it with one thread per stream, each running its queue in order and
honouring event waits, so the plan's event logic runs, and is tested, on a CPU.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import DeviceError


@dataclass(frozen=True)
class KernelSpan:
    """When the kernels of one launch ran on a stream (seconds on time.perf_counter's clock)."""

    stream: int
    tag: Any
    start: float
    end: float

_STOP = object()


class EmulatedStreams:
    """Streams as worker threads with FIFO queues; events as threading.Events.

    `running` shows what each stream is running now and `finished` the tags
    done, so a `synchronize` that runs out of time can say what is stuck.
    """

    def __init__(self, streams: int, events: int):
        self.queues = [queue.SimpleQueue() for _ in range(streams)]
        self.events = [threading.Event() for _ in range(events)]
        self.errors: list[BaseException] = []
        self.spans: list[KernelSpan] = []
        self.running: dict[int, Any] = {}
        self.finished: set[int] = set()  # id() of the tags done
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
            self.running[index] = tag
            start = time.perf_counter()
            try:
                fn()
            except BaseException as exc:  # reported by synchronize, after every stream has drained
                self.errors.append(exc)
            self.spans.append(KernelSpan(index, tag, start, time.perf_counter()))
            self.running.pop(index, None)
            self.finished.add(id(tag))
            if record is not None:
                self.events[record].set()

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None,
               slot: int = 0) -> None:
        self.queues[stream].put((fn, tuple(waits), record, tag))

    def thread_idents(self) -> list[int | None]:
        """The ids of the streams' threads (to cancel what a vertex awaits there)."""
        return [t.ident for t in self._threads]

    def synchronize(self, timeout: float | None = None) -> bool:
        """Wait for every stream to drain; False if `timeout` seconds passed first (the streams go on)."""
        for q in self.queues:
            q.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                return False
        if self.errors:
            raise self.errors[0]
        return True


class CupyStreams:
    """CUDA streams and events from cupy; kernels launched by `fn` go on the current stream."""

    def __init__(self, streams: int, events: int, timed: bool = False, slots: int = 1):
        import cupy

        self.cupy = cupy
        self.streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(streams)]
        self.events_per_slot = events
        self.events = [cupy.cuda.Event(disable_timing=True) for _ in range(events * slots)]
        self.timed = timed
        self.marks: list[tuple[int, Any, Any, Any]] = []  # (stream, tag, start event, end event)
        self.origin = cupy.cuda.Event()
        self.origin.record()
        self.host_origin = time.perf_counter()  # so spans line up with other executors' clocks

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None,
               slot: int = 0) -> None:
        s = self.streams[stream]
        base = slot * self.events_per_slot
        for e in waits:
            s.wait_event(self.events[base + e])
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
            self.events[base + record].record(s)

    def synchronize(self, timeout: float | None = None) -> bool:
        """Wait for every stream to drain; False if `timeout` seconds passed first."""
        if timeout is None:
            for s in self.streams:
                s.synchronize()
            return True
        deadline = time.monotonic() + timeout
        while not all(s.done for s in self.streams):
            if time.monotonic() > deadline:
                return False
            time.sleep(1e-4)
        return True

    def release(self, slot: int) -> None:
        """The step using `slot` is done (synchronized): its events may be recorded again."""

    def take_spans(self, keep: Callable[[Any], bool]) -> list[KernelSpan]:
        """The timed launches whose tag `keep` accepts, as spans (removed from the runtime)."""
        get = self.cupy.cuda.get_elapsed_time
        t0 = self.host_origin
        taken = [m for m in self.marks if keep(m[1])]
        self.marks = [m for m in self.marks if not keep(m[1])]
        return [KernelSpan(i, tag, t0 + get(self.origin, a) / 1e3, t0 + get(self.origin, b) / 1e3)
                for i, tag, a, b in taken]


class CheckedStreams:
    """CUDA's launch semantics on the CPU: `fn` runs at once on the host, and every wait is checked.

    What `device="emulated-cuda"` uses in the actor executor: the same planning,
    launches, events and host synchronization as on a GPU, with numpy. A wait
    for an event that no producer of the same step has recorded is the
    ordering bug a real device would turn into a silent race; here it raises.
    """

    def __init__(self, streams: int, events: int, timed: bool = False, slots: int = 1):
        self.events_per_slot = events
        self.recorded = [False] * (events * slots)
        self.timed = timed
        self.marks: list[KernelSpan] = []

    def launch(self, stream: int, fn: Callable[[], None], waits=(), record: int | None = None, tag=None,
               slot: int = 0) -> None:
        base = slot * self.events_per_slot
        for e in waits:
            if not self.recorded[base + e]:
                raise DeviceError(f"stream {stream} waits for event {e}, which no producer has recorded yet")
        start = time.perf_counter()
        fn()
        if self.timed:
            self.marks.append(KernelSpan(stream, tag, start, time.perf_counter()))
        if record is not None:
            self.recorded[base + record] = True

    def synchronize(self, timeout: float | None = None) -> bool:
        """Everything launched has run already (launches run at once on the host)."""
        return True

    def release(self, slot: int) -> None:
        """The step using `slot` is done: its events count as unrecorded until recorded again."""
        base = slot * self.events_per_slot
        for e in range(base, base + self.events_per_slot):
            self.recorded[e] = False

    def take_spans(self, keep: Callable[[Any], bool]) -> list[KernelSpan]:
        taken = [m for m in self.marks if keep(m.tag)]
        self.marks = [m for m in self.marks if not keep(m.tag)]
        return taken
