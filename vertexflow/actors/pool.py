"""A bounded pool of worker threads that trio tasks hand expensive vertices to.

`await pool.run(fn, *args, priority=p)` puts the call on a queue, parks the calling task,
and a worker thread runs it and reschedules the task through the trio token:
one queue hand-off and one `run_sync_soon` each way, cheaper than a
`trio.to_thread.run_sync` round trip. Workers are named `vf-worker-N`; that
name is the lane a trace shows.

The queue is ordered by priority, lowest first: the network passes (when its
step was submitted, the vertex's topological id), so an older step's work
goes first and, within a step, the branch a join waits on longest is not
starved by breadth-first arrival order.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ..machine import BlasThreads

_STOP = object()
_LAST = (float("inf"),)  # the priority of a stop: after every queued call


class _Worker:
    """One worker thread, and whether it has been retired (it ends after its current call)."""

    __slots__ = ("thread", "retired", "busy")

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.retired = False
        self.busy = False


class Job:
    """One call for a worker and the trio task its result goes to (see `WorkerPool.job`)."""

    __slots__ = ("fn", "args", "priority", "task", "token", "abandoned", "on_abandon", "queued", "before_put")

    def __init__(self, fn: Callable, args: tuple, priority: tuple, task, token):
        self.fn, self.args, self.priority, self.task, self.token = fn, args, priority, task, token
        self.abandoned = False
        self.queued = 0.0  # when it was put on the queue (perf_counter)
        # Called with the job by `put` before it is queued (on the putting thread): may set its priority.
        self.before_put: Callable[[Job], None] | None = None
        self.on_abandon: Callable[[], None] | None = None  # called if the task stops waiting before the end

    def deliver(self, result: outcome.Outcome) -> None:  # runs on the worker thread
        self.args = self.on_abandon = None  # it ran: hold none of its values (they may refer back to the job)
        try:
            self.token.run_sync_soon(self._resume, result)
        except trio.RunFinishedError:
            pass  # the trio run that asked is gone; nobody waits for this result

    def _resume(self, result: outcome.Outcome) -> None:  # runs on the trio thread
        if not self.abandoned:
            trio.lowlevel.reschedule(self.task, result)

    async def wait(self) -> Any:
        """Park the task until the job has run; its result, or its exception raised."""

        def abort(raise_cancel) -> trio.lowlevel.Abort:
            self.abandoned = True
            if self.on_abandon is not None:
                self.on_abandon()
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class WorkerPool:
    """`size` daemon threads sharing one priority queue of calls; started lazily, stopped by `close`.

    A call that never comes back cannot be interrupted; `replace_busy` leaves
    the threads running such calls to themselves and starts new ones in
    their place, so the pool keeps `size` threads that can take work.
    """

    def __init__(self, size: int, name: str = "vf-worker"):
        self.size = size
        self.name = name
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties in priority go first come, first served
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._started = 0
        self.busy = 0  # calls taken by a worker and not yet finished (read for diagnostics)
        self.handed = 0  # calls handed to the workers since the pool was made: the hand-offs
        self.blas = BlasThreads()
        # Held around each BLAS-calling op on a worker unless cores are shared out
        # (BlasThreads.sharing): BLAS already spreads one call over every core.
        self.blas_lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            while len(self._workers) < self.size:
                self._spawn()

    def _spawn(self) -> None:
        worker = _Worker()
        worker.thread = threading.Thread(target=self._work, args=(worker,), name=f"{self.name}-{self._started}",
                                         daemon=True)
        self._started += 1
        self._workers.append(worker)
        worker.thread.start()

    def _work(self, worker: _Worker) -> None:
        import numpy as np

        np.seterr(all="ignore")  # this thread's numpy error state; numerics are checked by check_numerics
        while not worker.retired:
            _, _, item = self._queue.get()
            if item is _STOP:
                return
            fn, args, deliver = item
            with self._lock:
                self.busy += 1
                worker.busy = True
            result = outcome.capture(fn, *args)
            with self._lock:
                self.busy -= 1
                worker.busy = False
            deliver(result)
            item = fn = args = deliver = result = None  # hold no values while waiting for the next call

    def queued(self) -> int:
        """Calls waiting for a worker (approximate while workers take them)."""
        return self._queue.qsize()

    def first_in_line(self, priority: tuple) -> bool:
        """Whether a call of this priority would be taken before every call now queued (a worker that could
        take such a call on itself, without queueing it, may)."""
        with self._queue.mutex:
            waiting = self._queue.queue
            return not waiting or waiting[0][0] > priority

    def replace_busy(self) -> list[str]:
        """Leave the threads now running a call to finish it on their own, and start new ones instead.

        Returns:
            the names of the threads left behind.
        """
        with self._lock:
            stuck = [w for w in self._workers if w.busy]
            for worker in stuck:
                worker.retired = True
                self._workers.remove(worker)
            for _ in stuck:
                self._spawn()
        return [w.thread.name for w in stuck]

    async def run(self, fn: Callable, *args: Any, priority: tuple = (0.0,)) -> Any:
        """Run fn(*args) on a worker thread and return its result (or raise its exception).

        Calls waiting for a worker are taken lowest `priority` first.

        Cancelling the waiting task abandons the call: the worker finishes it and
        the result is dropped (a thread cannot be interrupted).
        """
        job = self.job(fn, *args, priority=priority)
        self.put(job)
        return await job.wait()

    def job(self, fn: Callable, *args: Any, priority: tuple = (0.0,)) -> Job:
        """A call for a worker, its result going to the calling trio task (which then awaits `job.wait()`);
        `put` hands it to the workers, from any thread."""
        if len(self._workers) < self.size:
            self._start()
        return Job(fn, args, priority, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())

    def put(self, job: Job) -> None:
        """Queue a job for the workers (thread-safe)."""
        self.handed += 1
        if job.before_put is not None:
            job.before_put(job)
        job.queued = time.perf_counter()
        self._queue.put((job.priority, next(self._order), (job.fn, job.args, job.deliver)))

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the workers after the calls already queued; join them; give BLAS its threads back."""
        with self._lock:
            workers, self._workers = self._workers, []
        for _ in workers:
            self._queue.put((_LAST, next(self._order), _STOP))
        for worker in workers:
            worker.thread.join(timeout)
        self.blas.restore()

    @property
    def threads(self) -> list[threading.Thread]:
        return [w.thread for w in self._workers]
