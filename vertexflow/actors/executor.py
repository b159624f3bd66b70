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

import contextlib
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import trio

from ..autodiff.reverse import ReversePlan
from ..core import gradient_result, timeout_error
from ..errors import AsyncContextError, ExecutionTimeout, ExecutorClosed
from ..executor import Executor, Feeds, Fetch, SequentialExecutor
from ..graph import Graph, Node, ancestors
from .host import Host, Request
from .network import Network, StepState
from .plan import SOURCE_KINDS, NetworkPlan, plan_for
from .pool import WorkerPool

SCHEDULES = ("auto", "network", "tape")
BLAS_POLICIES = ("auto", "keep", "share")
TAPE, NETWORK = "tape", "network"


@dataclass
class Choice:
    """How one kind of call runs: as one actor (the tape) or as the network, and why.

    While `mode` is None the executor is still deciding: the first call runs on
    the tape and measures each vertex (`costs`, seconds); then, if the network
    can overlap expensive work, calls alternate between the two ways and
    `times` collects their durations (each way's first, a warm-up, left out).
    """

    mode: str | None = None
    reason: str = "not run yet"
    trials: int = 5
    warm: int = 2  # each way's first calls, left out: a process's first calls are slower
    costs: dict[int, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=lambda: {TAPE: [], NETWORK: []})
    calls: int = 0

    @classmethod
    def calls_to_decide(cls) -> int:
        """Calls of one kind before the choice is made (the profile, then each way in turn)."""
        return 1 + 2 * (cls.warm + cls.trials)

    def next(self) -> str:
        if self.mode is not None:
            return self.mode
        if self.calls == 0:
            return TAPE  # measured: the costs the plan is made from
        return NETWORK if len(self.times[NETWORK]) <= len(self.times[TAPE]) else TAPE

    def record(self, mode: str, seconds: float) -> None:
        self.calls += 1
        if self.mode is not None:
            return
        self.times[mode].append(seconds)
        tape, network = self.times[TAPE][self.warm:], self.times[NETWORK][self.warm:]
        if len(tape) >= self.trials and len(network) >= self.trials:
            # The fastest of each way: calls still speed up as the process warms (caches,
            # buffers, page faults), and noise only ever adds time.
            t, n = min(tape), min(network)
            self.mode = NETWORK if n < t else TAPE
            self.reason = (f"measured: the network took {n * 1e3:.3g} ms a call, the tape {t * 1e3:.3g} ms "
                           f"(fastest of {self.trials} after {self.warm} each)")

    def decide(self, mode: str, reason: str) -> None:
        self.mode, self.reason = mode, reason


class _Profile:
    """A step trace that keeps each vertex's time (forward and backward together), passing all on to another."""

    def __init__(self, costs: dict[int, float], inner=None):
        self.costs = costs
        self.inner = inner

    def record(self, node, phase, lane, ready, acquired, start, end, cpu, args, op=None, out_shape=None) -> None:
        self.costs[node.id] = self.costs.get(node.id, 0.0) + (end - start)
        if self.inner is not None:
            self.inner.record(node, phase, lane, ready, acquired, start, end, cpu, args, op, out_shape)

    def __getattr__(self, name):
        if self.inner is not None:
            return getattr(self.inner, name)
        if name == "step":
            return 0
        return lambda *args, **kwargs: None


class ActorExecutor(Executor):
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
        calibration: calls (or blocks of stream steps) timed each way, after two warm-up calls
            each, before "auto" decides (on the fastest of each way).
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
        calibration: int = 5,
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
        self._choices: dict[tuple, Choice] = {}
        self._sources: dict[tuple, list[Node]] = {}
        self._closed_by_finalizer = weakref.finalize(self, _release, self._hosts, self._pool)

    # -- hosts -----------------------------------------------------------------------
    def _host(self) -> Host:
        with self._host_lock:
            if not self._hosts or not self._hosts[0].alive:
                self._hosts[:] = [Host()]
            return self._hosts[0]

    def _abandon_host(self, host: Host) -> None:
        """The host's thread is stuck in a vertex: leave it, and start a new one at the next call."""
        with self._host_lock:
            if self._hosts and self._hosts[0] is host:
                self._hosts.clear()
        with contextlib.suppress(RuntimeError):
            host.stop(timeout=0)

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
        await _off_loop(self.close)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- plans ---------------------------------------------------------------------------
    def _needed_sources(self, fetch: Sequence[Node], reverse: ReversePlan | None) -> list[Node]:
        key = (tuple(n.id for n in fetch), None if reverse is None else id(reverse))
        sources = self._sources.get(key)
        if sources is None:
            targets = list(fetch) + ([reverse.output] if reverse is not None else [])
            sources = self._sources[key] = [n for n in ancestors(targets) if n.kind in SOURCE_KINDS]
        return sources

    def _network_plan(self, fetch, reverse, shapes: dict, stream: bool, costs: dict | None = None,
                      fusion=None) -> NetworkPlan:
        return plan_for(fetch, reverse, shapes, self.heavy_flops, self.threads, self.depth, stream, costs=costs,
                        fusion=fusion)

    def _fusion(self, fetch, reverse, specs: dict):
        """The rewrites and fused groups for these specs, as the tape finds them (the same groups, the same kernels)."""
        if not (self.fuse or self.optimize):
            return None
        from ..rewrites import plan_step

        key = (tuple(n.id for n in fetch), id(reverse), id(specs))
        found = self._fusion_cache.get(key)
        if found is None:
            kept = {n.id for n in fetch}
            if reverse is not None:
                kept |= {n.id for n in reverse.order} | {i.id for n in reverse.order for i in n.inputs}
                kept.add(reverse.output.id)
            plan = plan_step(self._order(fetch, reverse), specs, kept, optimize=self.optimize, fuse=self.fuse)
            found = self._fusion_cache[key] = plan if plan.ops else None
        return found

    def _order(self, fetch: Sequence[Node], reverse: ReversePlan | None) -> list[Node]:
        """Every vertex a step needs, in topological order (for the fed shapes' check)."""
        key = ("order", tuple(n.id for n in fetch), None if reverse is None else id(reverse))
        order = self._sources.get(key)
        if order is None:
            order = self._sources[key] = ancestors(list(fetch) + ([reverse.output] if reverse is not None else []))
        return order

    def _choice(self, key: tuple) -> Choice:
        choice = self._choices.get(key)
        if choice is None:
            choice = self._choices[key] = Choice(trials=self.calibration)
            if self.schedule != "auto":
                choice.decide(self.schedule, f"schedule={self.schedule!r} given")
        return choice

    def _after_profile(self, choice: Choice, fetch, reverse, checked: dict, stream: bool) -> None:
        """The first (measured) run is done: keep the tape if no network could overlap expensive work."""
        if choice.mode is not None:
            return
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        plan = self._network_plan(fetch, reverse, shapes, stream, choice.costs)
        parallel = plan.heavy_count if stream and self.depth > 1 else plan.heavy_width
        if self._pool is None or parallel < 2:
            choice.decide(TAPE, "measured: no two expensive vertices can run at once; a network would only "
                                "add hand-offs")

    def _network_factory(self, fetch, reverse, shapes: dict, stream: bool, costs: dict | None, fusion=None):
        def build() -> Network:
            plan = self._network_plan(fetch, reverse, shapes, stream, costs, fusion)
            streams = self._stream_runtime(plan) if self.backend.name in ("cuda", "emulated-cuda") else None
            share = self.blas == "share" and self._pool is not None
            blas_lock = self._pool.blas_lock if self._pool is not None and not share else None
            network = Network(plan, self.runner, self._pool, blas_lock, self.depth, streams)
            if share:
                parallel = plan.heavy_count if stream else plan.heavy_width
                network.blas_share = partial(self._pool.blas.sharing, min(self.threads, max(parallel, 1)))
            return network

        return build

    def _stream_runtime(self, plan):
        """(runtime, stream plan) for a network on CUDA streams (checked on the CPU for emulated-cuda)."""
        from ..gpu.runtime import CheckedStreams, CupyStreams
        from ..gpu.streams import plan_streams

        targets = list(plan.fetch) + ([plan.reverse.output] if plan.reverse is not None else [])
        stream_plan = plan_streams(targets, self.streams)
        runtime = CupyStreams if self.backend.name == "cuda" else CheckedStreams
        return runtime(stream_plan.streams, len(stream_plan.record), slots=self.depth), stream_plan

    def _source_values(self, sources: list[Node], checked: dict[int, Any], copy: bool = False) -> dict[int, Any]:
        values = {}
        for n in sources:
            if n.kind == "input":
                # In a stream, a loader may refill the array it fed once the call returns: take a snapshot.
                values[n.id] = checked[n.id].copy() if copy else checked[n.id]
            else:
                values[n.id] = self._device_value(n)
        return values

    def _request(self, fetch: list[Node], reverse, feeds: Feeds, trace, stream: bool = False,
                 choice: Choice | None = None) -> tuple[Host, Request, dict]:
        """Check the feeds, then hand one step to the host; (host, request, checked feeds)."""
        sources = self._needed_sources(fetch, reverse)
        checked = self._feeds(feeds, sources)
        specs, pooled = self._specs(("actor", *(n.id for n in fetch), id(reverse)), self._order(fetch, reverse),
                                    checked)
        fusion = self._fusion(fetch, reverse, specs)
        values = self._source_values(sources, checked, copy=stream)
        self.backend.uploaded()
        key = (tuple(n.id for n in fetch), None if reverse is None else id(reverse), stream,
               None if fusion is None else frozenset(fusion.ops))
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        costs = choice.costs if choice is not None and choice.costs else None
        build = self._network_factory(fetch, reverse, shapes, stream, costs, fusion)
        request = Request(key, build, values, trace, pooled, specs)
        host = self._host()
        host.submit(request)
        return host, request, checked

    def _timed_out(self, host: Host, request: Request, timeout: float) -> ExecutionTimeout:
        """The error for a step past its deadline; the network and any stuck thread are left behind."""
        network, step = request.network, request.step
        waiting = network.waiting(step) if network is not None and step is not None else {}
        if not waiting:
            waiting = {"(the step)": "the executor's host, busy with an earlier step or a stuck vertex"}
        error = timeout_error(timeout, waiting)
        host.discard(request)
        if network is not None:
            host.tear_down(network, error)
        if self._pool is not None:
            self._pool.replace_busy()
        if not host.responsive(0.5):
            self._abandon_host(host)
        return error

    def _wait(self, host: Host, request: Request, timeout: float | None) -> StepState:
        try:
            result = request.wait(timeout)
        except BaseException:  # Ctrl-C while waiting: the step goes on without us, its results dropped
            host.discard(request)
            raise
        if result is None:
            raise self._timed_out(host, request, timeout)
        return result.unwrap()

    async def _await(self, host: Host, request: Request, timeout: float | None) -> StepState:
        """The request's step, awaited in the caller's trio or asyncio task."""
        if _framework() == "asyncio":
            import asyncio

            try:
                return await asyncio.wait_for(request.wait_asyncio(lambda: host.discard(request)), timeout)
            except TimeoutError:
                raise await asyncio.to_thread(self._timed_out, host, request, timeout) from None
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            return await request.wait_async(lambda: host.discard(request))
        if scope.cancelled_caught:
            raise await trio.to_thread.run_sync(self._timed_out, host, request, timeout)
        raise ExecutorClosed("the step was cancelled")  # pragma: no cover - move_on_after only cancels itself

    # -- one step, either way --------------------------------------------------------------
    def _tape_call(self, choice: Choice, fetch, reverse, feeds, extra, single, fetched, timeout, trace):
        if choice.mode is None and choice.calls == 0:
            trace = _Profile(choice.costs, trace)
        if reverse is None:
            return self._tape.run_nodes(feeds, fetch, single, timeout, trace)
        return self._tape.backward_nodes(feeds, fetch[0], reverse, extra, single, fetched, timeout, trace)

    def _network_result(self, state: StepState, fetch, reverse, extra, single, fetched, feeds):
        if reverse is None:
            return self._results([state.values[n.id] for n in fetch], fetch, single)
        loss = fetch[0]
        grads = gradient_result(reverse, state.grads, self.backend.to_host, feeds)
        value, *given = self._hand_out([state.values[loss.id], *grads.values()], [loss, *([None] * len(grads))])
        grads = dict(zip(grads, given))
        if not fetched:
            return value, grads
        return value, grads, self._results([state.values[n.id] for n in extra], extra, single)

    def _call(self, fetch: list[Node], reverse, feeds, extra, single, fetched, timeout, tracer):
        choice = self._choice((tuple(n.id for n in fetch), None if reverse is None else id(reverse), False))
        mode = choice.next()
        start = time.perf_counter()
        trace = self._trace(tracer)
        if mode == TAPE:
            first = choice.calls == 0
            result = self._tape_call(choice, fetch, reverse, feeds, extra, single, fetched, timeout, trace)
            if first:
                sources = self._needed_sources(fetch, reverse)
                self._after_profile(choice, fetch, reverse, self._feeds(feeds, sources), stream=False)
        else:
            host, request, _ = self._request(fetch, reverse, feeds, trace, choice=choice)
            state = self._wait(host, request, timeout)
            result = self._network_result(state, fetch, reverse, extra, single, fetched, feeds)
        choice.record(mode, time.perf_counter() - start)
        return result

    async def _acall(self, fetch: list[Node], reverse, feeds, extra, single, fetched, timeout, tracer):
        choice = self._choice((tuple(n.id for n in fetch), None if reverse is None else id(reverse), False))
        mode = choice.next()
        start = time.perf_counter()
        if mode == TAPE:
            # Off the caller's loop, so its other tasks go on; _call records the time.
            return await _off_loop(partial(self._call, fetch, reverse, feeds, extra, single, fetched, timeout, tracer))
        host, request, _ = self._request(fetch, reverse, feeds, self._trace(tracer), choice=choice)
        state = await self._await(host, request, timeout)
        result = self._network_result(state, fetch, reverse, extra, single, fetched, feeds)
        choice.record(mode, time.perf_counter() - start)
        return result

    def _resolve(self, loss: Fetch, wrt, fetch):
        (loss,), _ = self._fetches([loss])
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        return loss, self._plan(loss, wrt), extra, single

    # -- the interface -----------------------------------------------------------------------
    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        _require_blocking("run")
        nodes, single = self._fetches(fetch)
        return self._call(nodes, None, feeds, [], single, False, timeout, self._tracer())

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        _require_blocking("backward")
        loss, reverse, extra, single = self._resolve(loss, wrt, fetch)
        return self._call([loss, *extra], reverse, feeds, extra, single, fetch is not None, timeout, self._tracer())

    async def arun(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        """`run` inside a trio task: other tasks go on while the step runs, and it can be cancelled."""
        _require_async("arun")
        nodes, single = self._fetches(fetch)
        return await self._acall(nodes, None, feeds, [], single, False, timeout, self._tracer())

    async def abackward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        """`backward` inside a trio task."""
        _require_async("abackward")
        loss, reverse, extra, single = self._resolve(loss, wrt, fetch)
        return await self._acall([loss, *extra], reverse, feeds, extra, single, fetch is not None, timeout,
                                 self._tracer())

    # -- streams ---------------------------------------------------------------------------
    def _stream_choice(self, nodes: list[Node]) -> Choice:
        return self._choice((tuple(n.id for n in nodes), None, True))

    def _stream_block(self, choice: Choice) -> int:
        return max(4, 2 * self.depth)

    async def stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                     depth: int | None = None) -> AsyncIterator:
        """Pipelined inference: yields the fetches for each feeds mapping, in input order.

        Step k+1 enters the network while step k is still in deeper vertices; at
        most `depth` steps are in flight (default: the executor's depth). Each
        step's feeds are copied as it is submitted, so a loader may refill its arrays.
        """
        _require_async("stream")
        nodes, single = self._fetches(fetch)
        steps = _stream_steps(self, feeds_iterable, nodes, single, depth)
        try:
            for step in steps:
                yield await step.resolve_async()
        finally:
            steps.close()

    def run_stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                   depth: int | None = None) -> Iterator:
        """The synchronous `stream`: a generator of results, in input order."""
        _require_blocking("run_stream")
        nodes, single = self._fetches(fetch)
        steps = _stream_steps(self, feeds_iterable, nodes, single, depth)
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
            head.append("runs as: decided at the first calls (schedule='auto')")
        return "\n".join(head + [self._network_plan(nodes, None, shapes, stream, costs).describe()])


class _TapeStep:
    """A stream step to run on the tape when its turn comes (on the caller's thread, or off a trio loop)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def resolve(self):
        return self.fn()

    async def resolve_async(self):
        return await _off_loop(self.fn)


class _Pending:
    """A stream step handed to the host, resolved (waited for) when its turn comes to be yielded."""

    __slots__ = ("executor", "host", "request", "nodes", "single", "choice", "started")

    def __init__(self, executor, host, request, nodes, single, choice, started):
        self.executor, self.host, self.request = executor, host, request
        self.nodes, self.single, self.choice, self.started = nodes, single, choice, started

    def _done(self, state: StepState):
        return self.executor._results([state.values[n.id] for n in self.nodes], self.nodes, self.single)

    def resolve(self):
        return self._done(self.executor._wait(self.host, self.request, None))

    async def resolve_async(self):
        return self._done(await self.executor._await(self.host, self.request, None))

    def drop(self) -> None:
        self.host.discard(self.request)


def _stream_steps(ex: ActorExecutor, feeds_iterable: Iterable[Feeds], nodes: list[Node], single: bool,
                  depth: int | None):
    """The steps of a stream in input order: results (tape) or `_Pending` steps (network), at most `depth` ahead.

    While the executor decides, blocks of steps alternate between the tape and
    the network, each block timed from its first result to its last.
    """
    limit = depth or ex.depth
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"depth= must be an int >= 1, got {depth!r}")
    choice = ex._stream_choice(nodes)
    tracer = ex._tracer()
    run = tracer.new_run() if tracer is not None else 0
    step = 0
    pending: deque[_Pending] = deque()
    block_mode, block_left, block_start, block_steps = None, 0, 0.0, 0
    sources = ex._needed_sources(nodes, None)
    try:
        for feeds in feeds_iterable:
            if block_left == 0:
                while pending:  # a block ends with its steps: then it is timed
                    yield pending.popleft()
                if block_mode is not None and block_steps > 1:
                    choice.record(block_mode, (time.perf_counter() - block_start) / block_steps)
                block_mode = choice.next()
                block_left = ex._stream_block(choice) if choice.mode is None else math.inf
                block_start, block_steps = time.perf_counter(), 0
            block_left -= 1
            block_steps += 1
            if block_mode == TAPE:
                first = choice.calls == 0 and block_steps == 1
                trace = ex._trace(tracer, step, run)
                step += 1
                yield _TapeStep(partial(ex._tape.run_nodes, feeds, nodes, single, None,
                                        _Profile(choice.costs, trace) if first else trace))
                if first:
                    ex._after_profile(choice, nodes, None, ex._feeds(feeds, sources), stream=True)
                    if choice.mode is not None:
                        block_left = math.inf  # decided: the rest of the stream runs this way
                continue
            while len(pending) >= limit:
                yield pending.popleft()
            host, request, _ = ex._request(nodes, None, feeds, ex._trace(tracer, step, run), stream=True, choice=choice)
            step += 1
            pending.append(_Pending(ex, host, request, nodes, single, choice, time.perf_counter()))
        while pending:
            yield pending.popleft()
    finally:
        for step in pending:
            step.drop()


def _framework() -> str | None:
    """"trio" or "asyncio" when called from a task of one of them, else None."""
    try:
        trio.lowlevel.current_trio_token()
        return "trio"
    except RuntimeError:
        pass
    import asyncio

    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        return None


def _require_async(what: str) -> None:
    if _framework() is None:
        raise AsyncContextError(
            f"ActorExecutor.{what}() is a coroutine for trio or asyncio tasks; outside one, call the "
            f"blocking form instead (run, backward, run_stream)")


def _require_blocking(what: str) -> None:
    # Inside trio a blocking call would stall every task of the run: say what to await instead.
    # (Not under asyncio: Jupyter runs one under every cell, and blocking calls are what cells make.)
    if _framework() == "trio":
        replacement = {"run": "arun", "backward": "abackward", "run_stream": "stream"}[what]
        raise AsyncContextError(
            f"ActorExecutor.{what}() blocks, and would stall this trio run; inside trio, use "
            f"`await executor.{replacement}(...)`" + (" (`async for`)" if what == "run_stream" else ""))


async def _off_loop(fn):
    """fn() on a thread, awaited from the caller's trio or asyncio task (cancelling abandons it)."""
    if _framework() == "asyncio":
        import asyncio

        return await asyncio.to_thread(fn)
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def _release(hosts: list, pool: WorkerPool | None) -> None:
    """The finalizer: an executor collected without close() stops its host and workers."""
    for host in list(hosts):
        with contextlib.suppress(Exception):
            host.stop(timeout=1.0)
    hosts.clear()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=1.0)


# numpy is imported for its side effect on the worker threads' error state in pool.py.
_ = np
