"""ActorExecutor: the graph as a persistent network of trio tasks.

Networks live in a *host*: a nursery that outlives any one call. Inside a
trio run the host is a system task of that run (so `await ex.arun(...)` needs
no setup, and the network persists across calls); the synchronous helpers
(`run`, `backward`, `run_stream`) use a host running its own trio loop on a
background thread. `close()` (or leaving `async with`) cancels the hosts and
stops the worker threads.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import trio

from ..autodiff.reverse import ReversePlan
from ..core import gradient_result, timeout_error
from ..executor import Executor, Feeds, Fetch
from ..graph import Graph, Node, ancestors
from .network import Network, StepState
from .plan import SOURCE_KINDS, plan_for
from .pool import WorkerPool

_END = object()


class Host:
    """A nursery that networks are started in, and the networks started there."""

    def __init__(self):
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.networks: dict[tuple, Network] = {}
        self.ready = threading.Event()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            self.ready.set()
            await trio.sleep_forever()

    def cancel(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()


class ActorExecutor(Executor):
    """Runs every vertex (or fused chain of cheap vertices) as a trio task linked by channels.

    Same interface and bitwise-identical results as SequentialExecutor, plus
    `stream` for pipelined inference.

    Args:
        graph: the graph to run.
        threads: worker threads for expensive vertices (0: everything on the trio thread).
        depth: steps in flight at once in a stream (the window that gives back-pressure).
        heavy_flops: estimated cost (in simple-op elements, ~1 ns each) from which a vertex
            is an actor of its own on a worker thread; a thread hand-off costs ~50-100 us.
        blas: how BLAS calls on parallel branches share the cores without oversubscribing
            them. "keep" (default): they take turns, each with all of BLAS's threads, while
            other expensive vertices run beside them; results stay bitwise identical to
            SequentialExecutor's. "share": they run at once with
            cores // parallel BLAS threads each; OpenBLAS may then round some matmuls
            differently in the last bits than a run with all its threads.
        streams: on device="cuda", the most CUDA streams the stream plan uses.
        device, tracer, check_numerics: as for every executor.
    """

    def __init__(
        self,
        graph: Graph,
        threads: int = 2,
        *,
        depth: int = 4,
        heavy_flops: float = 1e5,
        blas: str = "keep",
        streams: int = 4,
        **options,
    ):
        super().__init__(graph, **options)
        if threads < 0 or depth < 1:
            raise ValueError("threads must be >= 0 and depth >= 1")
        if blas not in ("keep", "share"):
            raise ValueError(f"blas must be 'keep' or 'share', got {blas!r}")
        self.blas = blas
        self.streams = streams
        self.threads = threads
        self.depth = depth
        self.heavy_flops = heavy_flops
        self._pool = WorkerPool(threads) if threads else None
        self._loop_host: Host | None = None
        self._thread_host: Host | None = None
        self._thread: threading.Thread | None = None
        self._sources: dict[tuple, list[Node]] = {}

    # -- hosts -----------------------------------------------------------------------
    async def _host(self) -> Host:
        token = trio.lowlevel.current_trio_token()
        if self._thread_host is not None and self._thread_host.token is token:
            return self._thread_host
        if self._loop_host is None or self._loop_host.token is not token:
            host = Host()
            trio.lowlevel.spawn_system_task(host.serve, name="vf actor host")
            while not host.ready.is_set():
                await trio.sleep(0)
            self._loop_host = host
        return self._loop_host

    def _thread_host_token(self) -> trio.lowlevel.TrioToken:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("ActorExecutor.run() blocks; inside trio, use `await executor.arun(...)`")
        if self._thread_host is None:
            host = Host()
            thread = threading.Thread(target=trio.run, args=(host.serve,), name="vf-actor-host", daemon=True)
            thread.start()
            host.ready.wait()
            self._thread_host, self._thread = host, thread
        return self._thread_host.token

    def _sync(self, fn, *args, **kwargs):
        token = self._thread_host_token()
        return trio.from_thread.run(functools.partial(fn, *args, **kwargs), trio_token=token)

    def close(self) -> None:
        """Stop every network and worker thread; the executor can still be used afterwards."""
        if self._thread_host is not None:
            host, thread = self._thread_host, self._thread
            self._thread_host = self._thread = None
            try:
                trio.from_thread.run_sync(host.cancel, trio_token=host.token)
            except trio.RunFinishedError:
                pass
            thread.join(10)
        if self._loop_host is not None:
            host, self._loop_host = self._loop_host, None
            try:
                if trio.lowlevel.current_trio_token() is host.token:
                    host.cancel()
            except RuntimeError:
                pass  # that trio run is over, and its networks with it
        if self._pool is not None:
            self._pool.close()

    async def aclose(self) -> None:
        self.close()
        await trio.sleep(0)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- networks ------------------------------------------------------------------------
    def _needed_sources(self, fetch: Sequence[Node], reverse: ReversePlan | None) -> list[Node]:
        key = (tuple(n.id for n in fetch), None if reverse is None else id(reverse))
        sources = self._sources.get(key)
        if sources is None:
            targets = list(fetch) + ([reverse.output] if reverse is not None else [])
            sources = self._sources[key] = [n for n in ancestors(targets) if n.kind in SOURCE_KINDS]
        return sources

    async def _network(self, host: Host, fetch, reverse, checked: dict[int, Any], depth: int | None = None) -> Network:
        """The network for these fetches, wired at the first call; `depth` > 1 for a stream."""
        stream = depth is not None and depth > 1
        key = (tuple(n.id for n in fetch), None if reverse is None else id(reverse), stream)
        network = host.networks.get(key)
        if network is None or network.broken is not None:
            shapes = {k: tuple(v.shape) for k, v in checked.items()}
            plan = plan_for(fetch, reverse, shapes, self.heavy_flops, self.threads, self.depth, stream)
            streams = None
            if self.backend.name in ("cuda", "emulated-cuda"):
                streams = self._stream_runtime(plan)
            blas_lock = self._pool.blas_lock if self._pool is not None and self.blas == "keep" else None
            network = Network(plan, self.runner, self._pool, blas_lock, self.depth, streams)
            await host.nursery.start(network.serve)
            host.networks[key] = network
        return network

    def _stream_runtime(self, plan):
        """(runtime, stream plan) for a network on CUDA streams (checked on the CPU for emulated-cuda)."""
        from ..gpu.runtime import CheckedStreams, CupyStreams
        from ..gpu.streams import plan_streams

        targets = list(plan.fetch) + ([plan.reverse.output] if plan.reverse is not None else [])
        stream_plan = plan_streams(targets, self.streams)
        runtime = CupyStreams if self.backend.name == "cuda" else CheckedStreams
        return runtime(stream_plan.streams, len(stream_plan.record), slots=self.depth), stream_plan

    def _blas_sharing(self, parallel: int):
        if self._pool is None or self.blas == "keep":
            return contextlib.nullcontext()
        return self._pool.blas.sharing(min(self.threads, max(parallel, 1)))

    def _source_values(self, sources: list[Node], checked: dict[int, Any]) -> dict[int, Any]:
        return {n.id: checked[n.id] if n.kind == "input" else self._device_value(n) for n in sources}

    async def _step(
        self, feeds: Feeds, fetch: list[Node], reverse: ReversePlan | None, timeout, tracer=None
    ) -> StepState:
        sources = self._needed_sources(fetch, reverse)
        checked = self._feeds(feeds, sources)
        values = self._source_values(sources, checked)
        self.backend.uploaded()
        host = await self._host()
        network = await self._network(host, fetch, reverse, checked)
        tracer = tracer or self._tracer()
        with self._blas_sharing(network.plan.heavy_width):
            step = await network.submit(values, tracer, self._next_step() if tracer is not None else 0)
            with trio.move_on_after(math.inf if timeout is None else timeout):
                return await network.result(step)
        # Only a timeout gets here: the step is stuck, so this network cannot be trusted again.
        error = timeout_error(timeout, network.waiting(step))
        network.shutdown(error)
        host.networks = {k: v for k, v in host.networks.items() if v is not network}
        raise error

    # -- the interface -----------------------------------------------------------------------
    async def arun(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None, _tracer=None):
        """`run` inside trio."""
        nodes, single = self._fetches(fetch)
        state = await self._step(feeds, nodes, None, timeout, _tracer)
        return self._results([state.values[n.id] for n in nodes], nodes, single)

    async def abackward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None,
                        _tracer=None):
        """`backward` inside trio."""
        (loss,), _ = self._fetches([loss])
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        plan = self._plan(loss, wrt)
        state = await self._step(feeds, [loss, *extra], plan, timeout, _tracer)
        to_host = self.backend.to_host
        grads = gradient_result(plan, state.grads, to_host, feeds)
        if fetch is None:
            return to_host(state.values[loss.id]), grads
        return to_host(state.values[loss.id]), grads, self._results([state.values[n.id] for n in extra], extra, single)

    # The sync helpers find the tracer of a `vf.trace()` block on the calling thread.
    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        return self._sync(self.arun, feeds, fetch, timeout=timeout, _tracer=self._tracer())

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        return self._sync(self.abackward, feeds, loss, wrt, fetch=fetch, timeout=timeout, _tracer=self._tracer())

    async def stream(
        self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *, depth: int | None = None, _tracer=None
    ) -> AsyncIterator:
        """Pipelined inference: yields the fetches for each feeds mapping, in input order.

        Step k+1 enters the network while step k is still in deeper vertices; at
        most `depth` steps are in flight (default: the executor's depth).
        """
        nodes, single = self._fetches(fetch)
        limit = depth or self.depth
        sources = self._needed_sources(nodes, None)
        tracer = _tracer or self._tracer()
        host = await self._host()
        feeds_iter = iter(feeds_iterable)
        pending: deque[int] = deque()
        network: Network | None = None
        sharing = None
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    feeds = next(feeds_iter, _END)
                    if feeds is _END:
                        exhausted = True
                        break
                    checked = self._feeds(feeds, sources)
                    values = self._source_values(sources, checked)
                    self.backend.uploaded()
                    network = await self._network(host, nodes, None, checked, depth=limit)
                    if sharing is None:
                        # Steps in flight overlap, so every expensive vertex may run beside another.
                        plan = network.plan
                        sharing = self._blas_sharing(plan.heavy_count if limit > 1 else plan.heavy_width)
                        sharing.__enter__()
                    trace_step = self._next_step() if tracer is not None else 0
                    pending.append(await network.submit(values, tracer, trace_step))
                if not pending:
                    return
                state = await network.result(pending.popleft())
                yield self._results([state.values[n.id] for n in nodes], nodes, single)
        finally:
            if network is not None:
                for step in pending:
                    network.discard(step)
            if sharing is not None:
                sharing.__exit__(None, None, None)

    def run_stream(
        self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *, depth: int | None = None
    ) -> Iterator:
        """The synchronous `stream`: a generator of results, in input order."""
        token = self._thread_host_token()
        agen = self.stream(feeds_iterable, fetch, depth=depth, _tracer=self._tracer())
        try:
            while True:
                try:
                    out = trio.from_thread.run(agen.__anext__, trio_token=token)
                except StopAsyncIteration:
                    return
                yield out
        finally:
            trio.from_thread.run(agen.aclose, trio_token=token)

    def describe(self, fetch: Fetch | Sequence[Fetch], feeds: Feeds = None, *, stream: bool = False) -> str:
        """How the vertices for `fetch` are split into actors (heavy, fused, light), for a run or a stream."""
        nodes, _ = self._fetches(fetch)
        checked = self._feeds(feeds, self._needed_sources(nodes, None)) if feeds else {}
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        return plan_for(nodes, None, shapes, self.heavy_flops, self.threads, self.depth, stream).describe()
