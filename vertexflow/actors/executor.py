"""ActorExecutor: the graph as a persistent network of trio tasks, used where it pays.

Networks live in a *host* (`host.py`): the executor's own trio loop on a
thread of its own. Every call, synchronous (`run`, `backward`,
`run_stream`) or asynchronous (`arun`, `abackward`, `stream`, from any trio
loop), hands its step to the host and waits for it on its own side, so a
vertex can never block a caller past its deadline or keep its Ctrl-C from it.

Whether a network pays is decided per kind of call (these fetches, a
forward or a backward, one step or a stream), as TensorFlow's executor
schedules from measured costs: the first call runs the graph as one actor
(the tape) and measures every vertex. A graph in which no two expensive
vertices can run at once has nothing for a network to gain, and keeps
running as one actor, at the tape's speed. Otherwise the executor times
both ways for a few calls (blocks of steps, for a stream) and keeps the
faster; `schedule="network"` or `"tape"` fixes the choice, and `describe()`
says which was made and why. Both ways give the same bits.

`close()` (or leaving `with`/`async with`) stops the host and the worker
threads; an executor dropped without it is stopped by its finalizer.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from functools import partial

from ..core import check_timeout, off_loop, thread_lane
from ..executor import Executor, Feeds, Fetch, SequentialExecutor
from ..graph import Graph, Node
from .calls import NetworkCalls, _release, _require_async, _require_blocking
from .host import Host
from .pool import WorkerPool
from .schedule import SCHEDULES, TAPE, Choice, Profile, Scheduling, must_run_as_network
from .streaming import stream_steps

BLAS_POLICIES = ("auto", "keep", "share")


class ActorExecutor(Scheduling, NetworkCalls, Executor):
    """Runs every vertex (or fused chain of cheap vertices) as a trio task linked by channels.

    Same interface and bitwise-identical results as SequentialExecutor, plus
    `stream` for pipelined inference.

    Args:
        graph: the graph to run.
        threads: worker threads for expensive vertices (0: everything on the host's trio thread).
        depth: steps in flight at once in a stream (the window that gives back-pressure).
        heavy_flops: cost (in simple-op elements, about a nanosecond each; once measured,
            the measured time in ns) from which a vertex is an actor of its own on a worker
            thread; a thread hand-off costs tens of microseconds.
        schedule: "auto" (default): the network where it measurably pays, else the graph as
            one actor on the tape; "network" or "tape" to fix it.
        blas: how BLAS calls on parallel branches share the cores without oversubscribing
            them. "auto" (default) and "keep": they take turns, each with all of BLAS's
            threads, while other expensive vertices run beside them; results stay bitwise
            identical to SequentialExecutor's. "share": they run at once with
            cores // parallel BLAS threads each; OpenBLAS then rounds many float32 products
            differently in the last bits than a run with all its threads.
        streams: on device="cuda", the most CUDA streams the stream plan uses.
        calibration: timed calls (or blocks of stream steps) of the network before "auto"
            decides, the tape's one fewer: with the default 2, the choice is made at the fifth
            call (the measured tape, the network's warm-up, then network, tape, network).
        device, tracer, check_numerics, buffers: as for every executor.
    """

    def __init__(
        self,
        graph: Graph,
        threads: int = 2,
        *,
        depth: int = 4,
        heavy_flops: float = 1e5,
        schedule: str = "auto",
        blas: str = "auto",
        streams: int = 4,
        calibration: int = 2,
        **options,
    ):
        super().__init__(graph, **options)
        for name, value in (("threads", threads), ("depth", depth), ("streams", streams),
                            ("calibration", calibration)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ActorExecutor: {name}= takes an int, got {value!r}")
        if threads < 0:
            raise ValueError(f"ActorExecutor: threads= must be >= 0, got {threads}")
        for name, value in (("depth", depth), ("streams", streams), ("calibration", calibration)):
            if value < 1:
                raise ValueError(f"ActorExecutor: {name}= must be >= 1, got {value}")
        if not isinstance(heavy_flops, (int, float)) or heavy_flops < 0:
            raise TypeError(f"ActorExecutor: heavy_flops= takes a number >= 0, got {heavy_flops!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"ActorExecutor: schedule= must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if blas not in BLAS_POLICIES:
            raise ValueError(f"ActorExecutor: blas= must be one of {', '.join(BLAS_POLICIES)}, got {blas!r}")
        if self.backend.name in ("cuda", "emulated-cuda") and schedule == "auto":
            schedule = "network"  # on a GPU the network launches on streams; the tape is one stream
        self.threads = threads
        self.depth = depth
        self.heavy_flops = float(heavy_flops)
        self.schedule = schedule
        self.blas = blas
        self.streams = streams
        self.calibration = calibration
        self._pool = WorkerPool(threads) if threads else None
        self._tape = SequentialExecutor(graph, device=self.backend.name, check_numerics=self.check_numerics,
                                        buffers=self.buffers is not None, fuse=self.fuse, optimize=self.optimize)
        self._tape.buffers = self.buffers  # one pool of buffers for both ways of running
        self._tape.runner = self.runner
        self._hosts: list[Host] = []  # the live host, if any (a list, so the finalizer can see it)
        self._host_lock = threading.Lock()
        self._suspect = False  # a call was given up mid-step: check the host answers before the next
        self._choices: dict[tuple, Choice] = {}
        self._sources: dict[tuple, list[Node]] = {}
        self._closed_by_finalizer = weakref.finalize(self, _release, self._hosts, self._pool)

    def close(self) -> None:
        """Stop every network and worker thread; the executor can still be used afterwards."""
        with self._host_lock:
            hosts, self._hosts[:] = list(self._hosts), []
        for host in hosts:
            host.stop()
        if self._pool is not None:
            self._pool.close()
        self._tape.close()

    async def aclose(self) -> None:
        """`close` from a trio or asyncio task (it joins threads, so off the loop)."""
        await off_loop(self.close)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- one step, either way --------------------------------------------------------------
    def _tape_call(self, choice: Choice, fetch, reverse, feeds, extra, single, fetched, timeout, trace):
        if choice.mode is None and choice.calls == 0:
            trace = Profile(choice.costs, trace)
        if reverse is None:
            return self._tape.run_nodes(feeds, fetch, single, timeout, trace)
        return self._tape.backward_nodes(feeds, fetch[0], reverse, extra, single, fetched, timeout, trace)

    def _call(self, fetch: list[Node], reverse, feeds, extra, single, fetched, timeout, tracer):
        choice = self._choice((tuple(n.id for n in fetch), None if reverse is None else id(reverse), False), fetch,
                              reverse)
        mode = choice.next()
        start = time.perf_counter()
        trace = self._trace(tracer)
        if trace is not None:  # how this call runs, and why (the viewer and compare say so)
            trace.event("schedule", thread_lane(), start, start, mode=mode, reason=choice.reason)
        if mode == TAPE:
            first = choice.calls == 0
            result = self._tape_call(choice, fetch, reverse, feeds, extra, single, fetched, timeout, trace)
            if first:
                sources = self._needed_sources(fetch, reverse)
                self._after_profile(choice, fetch, reverse, self._feeds(feeds, sources), stream=False)
                # the tape's timed turn runs its program, not its compiling (which made it look 3x slower)
                self._tape.prepare(feeds, fetch if reverse is None else [fetch[0]], reverse, extra)
        else:
            measuring = self._measures_network(choice)
            host, request, checked = self._request(fetch, reverse, feeds,
                                                   Profile(choice.costs, trace) if measuring else trace,
                                                   choice=choice)
            state = self._wait(host, request, timeout)
            result = self._network_result(state, fetch, reverse, extra, single, fetched, feeds)
            if measuring:
                self._after_measured_network(choice, fetch, reverse, checked, stream=False)
        end = time.perf_counter()
        choice.record(mode, end - start)
        if trace is not None:
            trace.slice(start, end)  # the call, from entry to return
        return result

    async def _acall(self, fetch: list[Node], reverse, feeds, extra, single, fetched, timeout, tracer):
        choice = self._choice((tuple(n.id for n in fetch), None if reverse is None else id(reverse), False), fetch,
                              reverse)
        mode = choice.next()
        start = time.perf_counter()
        if mode == TAPE:
            # Off the caller's loop, so its other tasks go on; _call records the time.
            return await off_loop(partial(self._call, fetch, reverse, feeds, extra, single, fetched, timeout, tracer))
        measuring = self._measures_network(choice)
        trace = self._trace(tracer)
        if trace is not None:
            trace.event("schedule", thread_lane(), start, start, mode=mode, reason=choice.reason)
        host, request, checked = self._request(fetch, reverse, feeds, Profile(choice.costs, trace) if measuring else trace,
                                               choice=choice)
        state = await self._await(host, request, timeout)
        result = self._network_result(state, fetch, reverse, extra, single, fetched, feeds)
        if measuring:
            self._after_measured_network(choice, fetch, reverse, checked, stream=False)
        end = time.perf_counter()
        choice.record(mode, end - start)
        if trace is not None:
            trace.slice(start, end)
        return result

    def _resolve(self, loss: Fetch, wrt, fetch):
        (loss,), _ = self._fetches([loss])
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        return loss, self._plan(loss, wrt), extra, single

    # -- the interface -----------------------------------------------------------------------
    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        _require_blocking("run")
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        return self._call(nodes, None, feeds, [], single, False, timeout, self._tracer())

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        _require_blocking("backward")
        timeout = check_timeout(timeout)
        loss, reverse, extra, single = self._resolve(loss, wrt, fetch)
        return self._call([loss, *extra], reverse, feeds, extra, single, fetch is not None, timeout, self._tracer())

    async def arun(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        """`run` inside a trio task: other tasks go on while the step runs, and it can be cancelled."""
        _require_async("arun")
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        return await self._acall(nodes, None, feeds, [], single, False, timeout, self._tracer())

    async def abackward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        """`backward` inside a trio task."""
        _require_async("abackward")
        timeout = check_timeout(timeout)
        loss, reverse, extra, single = self._resolve(loss, wrt, fetch)
        return await self._acall([loss, *extra], reverse, feeds, extra, single, fetch is not None, timeout,
                                 self._tracer())

    # -- streams ---------------------------------------------------------------------------
    async def stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                     depth: int | None = None, timeout: float | None = None) -> AsyncIterator:
        """Pipelined inference: yields the fetches for each feeds mapping, in input order.

        Step k+1 enters the network while step k is still in deeper vertices; at
        most `depth` steps are in flight (default: the executor's depth). Each
        step's feeds are copied as it is submitted, so a loader may refill its arrays.
        With `timeout`, each step's result must come within that many seconds of the
        stream asking for it: ExecutionTimeout names what the step still waits for,
        the stream ends, and the executor works again at the next call.
        """
        _require_async("stream")
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        steps = stream_steps(self, feeds_iterable, nodes, single, depth, timeout)
        try:
            for step in steps:
                yield await step.resolve_async()
        finally:
            steps.close()

    def run_stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                   depth: int | None = None, timeout: float | None = None) -> Iterator:
        """The synchronous `stream`: a generator of results, in input order (`timeout` per step, as there)."""
        _require_blocking("run_stream")
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        steps = stream_steps(self, feeds_iterable, nodes, single, depth, timeout)
        try:
            for step in steps:
                yield step.resolve()
        finally:
            steps.close()

    # -- diagnostics -----------------------------------------------------------------------
    def trace_options(self) -> dict:
        return {"threads": self.threads, "schedule": self.schedule, "blas": self.blas,
                **({"device": self.backend.name} if self.backend.name != "cpu" else {}),
                **({"fuse": True} if self.fuse else {})}

    def describe(self, fetch: Fetch | Sequence[Fetch], feeds: Feeds = None, *, stream: bool = False) -> str:
        """How the vertices for `fetch` run: one actor or the network (and why), and the actors."""
        nodes, _ = self._fetches(fetch)
        checked = self._feeds(feeds, self._needed_sources(nodes, None)) if feeds else {}
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        choice = self._choices.get((tuple(n.id for n in nodes), None, stream))
        costs = choice.costs if choice is not None and choice.costs else None
        head = []
        if choice is not None:
            head.append(f"runs as: {choice.mode or 'deciding'} ({choice.reason})")
        elif self.schedule != "auto":
            head.append(f"runs as: {self.schedule} (schedule={self.schedule!r} given)")
        else:
            reason = must_run_as_network(self._order(nodes, None))
            head.append(f"runs as: network ({reason})" if reason else
                        "runs as: decided at the first calls (schedule='auto')")
        return "\n".join(head + [self._network_plan(nodes, None, shapes, stream, costs).describe()])


