"""A bounded pool of worker threads that trio tasks hand expensive vertices to.

`await pool.run(fn, *args)` puts the call on a queue, parks the calling task,
and a worker thread runs it and reschedules the task through the trio token:
one queue hand-off and one `run_sync_soon` each way, cheaper than a
`trio.to_thread.run_sync` round trip. Workers are named `vf-worker-N`; that
name is the lane a trace shows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ..machine import BlasThreads

_STOP = object()


class WorkerPool:
    """`size` daemon threads sharing one queue of calls; started lazily, stopped by `close`."""

    def __init__(self, size: int, name: str = "vf-worker"):
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.busy = 0  # calls taken by a worker and not yet finished (read for diagnostics)
        self.blas = BlasThreads()
        # Held around each BLAS-calling op on a worker unless cores are shared out
        # (BlasThreads.sharing): BLAS already spreads one call over every core.
        self.blas_lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self.size):
                thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        import numpy as np

        np.seterr(all="ignore")  # this thread's numpy error state; numerics are checked by check_numerics
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, deliver = item
            with self._lock:
                self.busy += 1
            result = outcome.capture(fn, *args)
            with self._lock:
                self.busy -= 1
            deliver(result)

    async def run(self, fn: Callable, *args: Any) -> Any:
        """Run fn(*args) on a worker thread and return its result (or raise its exception).

        Cancelling the waiting task abandons the call: the worker finishes it and
        the result is dropped (a thread cannot be interrupted).
        """
        if not self._threads:
            self._start()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        state = {"abandoned": False}

        def resume(result: outcome.Outcome) -> None:  # runs on the trio thread
            if not state["abandoned"]:
                trio.lowlevel.reschedule(task, result)

        def deliver(result: outcome.Outcome) -> None:  # runs on the worker thread
            try:
                token.run_sync_soon(resume, result)
            except trio.RunFinishedError:
                pass  # the trio run that asked is gone; nobody waits for this result

        def abort(raise_cancel) -> trio.lowlevel.Abort:
            state["abandoned"] = True
            return trio.lowlevel.Abort.SUCCEEDED

        self._queue.put((fn, args, deliver))
        return await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the workers after the calls already queued; join them; give BLAS its threads back."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
        for thread in threads:
            thread.join(timeout)
        self.blas.restore()

    @property
    def threads(self) -> list[threading.Thread]:
        return list(self._threads)
