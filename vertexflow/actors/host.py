"""The host: an executor's own trio loop, on a thread of its own, where its networks live.

Every call that runs a network (`run`, `backward`, `run_stream` from any
thread, and `arun`, `abackward`, `stream` from any trio loop) becomes a
`Request` handed to the host. The host wires the network for the request's
fetches the first time (one network per set of fetches, however many
callers ask at once), submits the step, and completes the request when the
step's results are in. The caller waits for that on its own side: a thread
blocks on an event, a trio task is rescheduled. So no vertex ever runs on a
caller's thread or in a caller's trio loop: a vertex that blocks its thread
cannot stop a caller from returning at its deadline, from being cancelled,
or from getting its Ctrl-C.

Lifetime: the host holds nothing of the executor (the networks hold the
plan, the execution core and the worker pool), so an executor dropped
without `close()` is collected and its finalizer stops the host.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import outcome
import trio

from ..errors import ExecutorClosed
from .network import Network


class Request:
    """One step asked of the host, and where its result goes.

    Attributes:
        network, step: set once the host has submitted the step (for diagnostics and discarding).
    """

    def __init__(self, key: Any, build: Callable[[], Network], values: dict, trace, pooled: dict | None = None,
                 specs: dict | None = None, stream: bool = False):
        self.key = key
        self.stream = stream  # a stream's step: the network records its slice (a call records its own)
        self.pooled = pooled or {}
        self.specs = specs
        self.build = build
        self.values = values
        self.trace = trace
        self.network: Network | None = None
        self.step: int | None = None
        self.abandoned = False
        self._outcome: outcome.Outcome | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._task = None
        self._token = None
        self._future = None  # an asyncio caller's future

    def complete(self, result: outcome.Outcome) -> None:
        """Hand the step's outcome to whoever waits (called on the host's thread)."""
        with self._lock:
            if self._outcome is not None:
                return
            self._outcome = result
            task, token, future = self._task, self._token, self._future
        self._done.set()
        if task is not None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass  # that caller's trio run has ended; nobody waits any more
        if future is not None:
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, result)
            except RuntimeError:
                pass  # that asyncio loop has closed

    def wait(self, timeout: float | None) -> outcome.Outcome | None:
        """The outcome, blocking this thread; None if `timeout` seconds pass first."""
        if not self._done.wait(timeout):
            return None
        return self._outcome

    async def wait_async(self, on_cancel: Callable[[], None]):
        """The step's result in the calling trio task (which may be cancelled: then `on_cancel` runs)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        with self._lock:
            ready = self._outcome
            if ready is None:
                self._task = trio.lowlevel.current_task()
                self._token = trio.lowlevel.current_trio_token()
        if ready is not None:
            return ready.unwrap()

        def abort(raise_cancel) -> trio.lowlevel.Abort:
            with self._lock:
                if self._outcome is not None:
                    return trio.lowlevel.Abort.FAILED  # its reschedule is on its way
                self._task = None
            on_cancel()
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


    async def wait_asyncio(self, on_cancel: Callable[[], None]):
        """The step's result in the calling asyncio task (cancelled: `on_cancel` runs)."""
        import asyncio

        future = asyncio.get_running_loop().create_future()
        with self._lock:
            ready = self._outcome
            if ready is None:
                self._future = future
        if ready is not None:
            return ready.unwrap()
        try:
            return await future
        except asyncio.CancelledError:
            on_cancel()
            raise


def _completed(request: Request, state) -> None:
    request.complete(outcome.Error(state.error) if state.error is not None else outcome.Value(state))


def _settle(future, result: outcome.Outcome) -> None:
    if future.done():
        return
    if isinstance(result, outcome.Value):
        future.set_result(result.value)
    else:
        future.set_exception(result.error)


class _Wiring:
    """A network being wired: later requests for the same fetches wait for this one."""

    def __init__(self):
        self.done = trio.Event()
        self.network: Network | None = None
        self.error: BaseException | None = None


class Host:
    """A trio loop on a daemon thread running an executor's networks."""

    def __init__(self, name: str = "vf-actor-host"):
        self.name = name
        self.networks: dict[Any, Network | _Wiring] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        trio.run(self._serve)

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def call_soon(self, fn: Callable, *args) -> None:
        """Run fn(*args) on the host's thread, soon.

        Raises:
            ExecutorClosed: the host has stopped.
        """
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise ExecutorClosed("the executor's host has stopped; the executor starts a new one on its next call") from None

    def submit(self, request: Request) -> None:
        self.call_soon(self._start, request)

    def _start(self, request: Request) -> None:
        network = self.networks.get(request.key)
        if isinstance(network, Network) and network.blas_share is None and not request.abandoned:
            # Wired and with room in its window: start the step right here, and complete the request from
            # the step's end (no task of its own: one trip through the loop less each way).
            step = network.start(request.values, partial(_completed, request), request.trace, request.pooled,
                                 request.specs, sliced=request.stream)
            if step is not None:
                request.network, request.step = network, step
                return
        self._nursery.start_soon(self._drive, request, name=f"vf step {request.key!r}"[:80])

    async def _drive(self, request: Request) -> None:
        try:
            network = await self._network(request.key, request.build, request.trace)
            if request.abandoned:
                return  # its caller went away before the step started
            with network.blas_share() if network.blas_share is not None else contextlib.nullcontext():
                step = await network.submit(request.values, request.trace, request.pooled, request.specs,
                                            sliced=request.stream)
                request.network, request.step = network, step
                if request.abandoned:
                    network.discard(step)
                    return
                state = await network.result(step)
            request.complete(outcome.Value(state))
        except trio.Cancelled:
            request.complete(outcome.Error(ExecutorClosed("the executor was closed while this step ran")))
            raise
        except BaseException as exc:  # noqa: BLE001 - the step's failure is the caller's to see
            request.complete(outcome.Error(exc))

    async def _network(self, key: Any, build: Callable[[], Network], trace=None) -> Network:
        """The network for `key`, wired once however many requests ask for it at once."""
        while True:
            found = self.networks.get(key)
            if isinstance(found, _Wiring):
                await found.done.wait()
                if found.error is not None:
                    raise found.error
                continue
            if found is not None and found.broken is None:
                return found
            wiring = self.networks[key] = _Wiring()
            started = time.perf_counter()
            try:
                network = build()
                await self._nursery.start(network.serve)
                if trace is not None:
                    trace.event("wire network", "trio", started, time.perf_counter(),
                                actors=len(network.plan.actors))
            except BaseException as exc:
                self.networks.pop(key, None)
                wiring.error = exc
                wiring.done.set()
                raise
            self.networks[key] = network
            wiring.network = network
            wiring.done.set()
            return network

    # -- from other threads ----------------------------------------------------------
    def discard(self, request: Request) -> None:
        """The caller stopped waiting: drop the request's results when they come.

        A step still running then gets a moment to finish; one that does not (a vertex
        awaiting something that never comes) has its network stopped, so later calls do
        not queue behind it: the next call wires a new one.
        """
        request.abandoned = True

        def drop() -> None:
            network, step = request.network, request.step
            if network is not None and step is not None:
                state = network.steps.get(step)
                network.discard(step)
                if state is not None and not state.done.is_set():
                    self._nursery.start_soon(self._reap, network, state)

        try:
            self.call_soon(drop)
        except ExecutorClosed:
            pass

    async def _reap(self, network: Network, state, grace: float = 0.2) -> None:
        """A given-up step still runs: new calls wire a network of their own; this one stops unless it ends soon."""
        for key, found in list(self.networks.items()):
            if found is network:
                del self.networks[key]
        with trio.move_on_after(grace):
            await state.done.wait()
        if state.done.is_set():  # it ended after all: let the steps of other calls finish, then stop it
            while network.steps and network.broken is None:
                await trio.sleep(0.05)
        network.shutdown(ExecutorClosed("a call that was given up left this step running; its network was stopped"))

    def retire(self, key: Any) -> None:
        """No call will use the network for `key` again (measured costs placed its vertices otherwise): it
        stops once the steps it has in flight are done."""

        def retire_now() -> None:
            network = self.networks.get(key)
            if isinstance(network, Network):
                del self.networks[key]
                self._nursery.start_soon(self._stop_when_idle, network)

        try:
            self.call_soon(retire_now)
        except ExecutorClosed:
            pass

    async def _stop_when_idle(self, network: Network) -> None:
        while network.steps and network.broken is None:
            await trio.sleep(0.01)
        network.shutdown(ExecutorClosed("its plan was replaced by one from measured costs"))

    def tear_down(self, network: Network, error: BaseException) -> None:
        """Stop a network that cannot be trusted any more (a step timed out in it); the next call wires anew."""

        def stop() -> None:
            network.shutdown(error)
            for key, found in list(self.networks.items()):
                if found is network:
                    del self.networks[key]

        try:
            self.call_soon(stop)
        except ExecutorClosed:
            pass

    def responsive(self, timeout: float) -> bool:
        """Whether the host's loop answers within `timeout` s (a vertex may be blocking its thread)."""
        answered = threading.Event()
        try:
            self.call_soon(answered.set)
        except ExecutorClosed:
            return False
        return answered.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every network and wait (up to `timeout` s) for the thread to end."""
        if self._thread is threading.current_thread():
            raise RuntimeError("an executor cannot be closed from inside one of its own vertices")
        try:
            self.call_soon(self._nursery.cancel_scope.cancel)
        except ExecutorClosed:
            return
        self._thread.join(timeout)
