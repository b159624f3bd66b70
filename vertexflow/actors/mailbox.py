"""An actor's mailbox: the values sent to it, kept per step and phase until it takes them.

Messages are `(step, phase, {key: value})`: the step driver's source values,
a producer's value, a consumer's edge gradient. An actor takes the one it
needs next (`take`); whatever else arrives first (a later step's feed, a
value for a later member) is kept until asked for.

The box is shared with the worker threads: a worker that has just computed
a value posts it to its readers itself (`post_from_thread`), and a worker
that finished one of an actor's segments may take the inputs of the actor's
next segment when they are all in (`take_ready`) and compute it at once,
without a trip through the trio thread. One lock guards the kept values; the
actor's task is woken on the trio thread, through the run's token when the
post comes from elsewhere.

Sends never block: the network's window of steps in flight bounds what a
box can hold, so a full box is vertexflow's bug (`InternalError`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import trio

from ..errors import InternalError


class Mailbox:
    def __init__(self, capacity: int):
        self.capacity = capacity  # values held at most
        self.kept: dict[tuple[int, str], dict[int, Any]] = {}
        self.held = 0
        self.lock = threading.Lock()
        self._waiter: tuple | None = None  # (task, step, phase, key) of the actor's task parked in `take`
        self._pending: tuple | None = None  # (step, phase, keys, job, values, pool): a job waiting for inputs

    def post(self, step: int, phase: str, payload: dict[int, Any]) -> None:
        """File a message; on the trio thread."""
        task = self._file(step, phase, payload)
        if task is not None:
            trio.lowlevel.reschedule(task)

    def post_from_thread(self, step: int, phase: str, payload: dict[int, Any], token: trio.lowlevel.TrioToken) -> None:
        """File a message from a thread other than the trio thread (the actor's task is woken through `token`)."""
        task = self._file(step, phase, payload)
        if task is not None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task)
            except trio.RunFinishedError:
                pass  # the network is gone; nobody takes this

    def start_when_in(self, step: int, phase: str, keys: Sequence[int], job, values: dict, pool) -> None:
        """Queue `job` on `pool` once all of `keys` are in, taken into `values` first: now if they are, else
        from whichever thread posts the last of them (a worker queues it itself, no trip through the trio
        thread). On the trio thread; the actor then awaits the job."""
        with self.lock:
            if not self._all_in(step, phase, keys):
                self._pending = (step, phase, keys, job, values, pool)
                job.on_abandon = self._forget
                return
            values.update(self._pop_all(step, phase, keys))
        pool.put(job)

    def _forget(self) -> None:
        with self.lock:
            self._pending = None

    def _file(self, step: int, phase: str, payload: dict[int, Any]):
        """Keep the payload's values; the parked task to wake if one of them is what it waits for."""
        with self.lock:
            self.held += len(payload)
            if self.held > self.capacity:
                raise InternalError("an actor inbox overflowed; the step window should prevent this")
            box = self.kept.get((step, phase))
            if box is None:
                # A copy: the same payload may go to several actors, and this box is popped.
                self.kept[(step, phase)] = dict(payload)
            else:
                box.update(payload)
            pending = self._pending
            if pending is not None and pending[0] == step and pending[1] == phase and \
                    self._all_in(step, phase, pending[2]):
                self._pending = None
                _, _, keys, job, values, pool = pending
                values.update(self._pop_all(step, phase, keys))
            else:
                pending = None
            waiter = self._waiter
            if waiter is not None and waiter[1] == step and waiter[2] == phase and waiter[3] in payload:
                self._waiter = None
                waiter = waiter[0]
            else:
                waiter = None
        if pending is not None:
            pool.put(job)
        return waiter

    def _all_in(self, step: int, phase: str, keys: Sequence[int]) -> bool:  # the lock held
        box = self.kept.get((step, phase), {})
        return all(key in box for key in keys)

    def _pop_all(self, step: int, phase: str, keys: Sequence[int]) -> dict[int, Any]:  # the lock held
        return {key: self._pop(step, phase, key) for key in keys}

    def has(self, step: int, phase: str, key: int) -> bool:
        with self.lock:
            box = self.kept.get((step, phase))
            return box is not None and key in box

    def _pop(self, step: int, phase: str, key: int) -> Any:  # the lock held
        box = self.kept[(step, phase)]
        value = box.pop(key)
        self.held -= 1
        if not box:
            del self.kept[(step, phase)]
        return value

    async def take(self, step: int, phase: str, key: int) -> Any:
        """The value `key` of `step` and `phase`, waiting for it if it has not come yet (on the trio thread)."""
        with self.lock:
            box = self.kept.get((step, phase))
            if box is not None and key in box:
                return self._pop(step, phase, key)
            self._waiter = (trio.lowlevel.current_task(), step, phase, key)

        def abort(raise_cancel) -> trio.lowlevel.Abort:
            with self.lock:
                if self._waiter is None:  # a post already claimed this task: its wake-up is on its way
                    return trio.lowlevel.Abort.FAILED
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        with self.lock:
            return self._pop(step, phase, key)

    def take_ready(self, step: int, phase: str, keys: Sequence[int]) -> dict[int, Any] | None:
        """{key: value} for every one of `keys` if all are in, taken at once; else None and nothing taken.

        Any thread may call it while the actor's task is not parked in `take`."""
        with self.lock:
            return self._pop_all(step, phase, keys) if self._all_in(step, phase, keys) else None

