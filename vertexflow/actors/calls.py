"""How the actor executor hands a step to its host and waits for it: requests, deadlines, results.

A call checks its feeds, takes the step's concrete specs and rewrite plan,
and hands the host a `Request` (host.py) carrying the source values and a
factory for the network that runs it; the caller then waits on its own side
(a blocking wait, a trio or an asyncio await), so a vertex can never hold a
caller past its deadline. A step past its deadline tears its network down,
replaces stuck worker threads and, if the host itself is stuck, leaves it
for a new one at the next call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from ..autodiff.reverse import ReversePlan
from ..core import event_framework as _framework
from ..core import gradient_result, timeout_error
from ..errors import AsyncContextError, ExecutionTimeout, ExecutorClosed
from ..executor import Feeds
from ..graph import Node, ancestors
from .host import Host, Request
from .network import Network, StepState
from .plan import SOURCE_KINDS, NetworkPlan, plan_for
from .pool import WorkerPool
from .schedule import Choice

_UNPLANNED = object()  # a step's rewrites not worked out yet (None: worked out, and there are none)


class NetworkCalls:
    """Hosts, requests and waits of the actor executor (a mixin of ActorExecutor).

    Needs from the executor: its options (threads, depth, heavy_flops, blas, streams,
    fuse, optimize), `_pool`, `_hosts`, `_host_lock`, `_sources` and the Executor
    base's feed checks, specs and results.
    """

    # -- hosts -----------------------------------------------------------------------
    def _host(self) -> Host:
        with self._host_lock:
            suspect, self._suspect = self._suspect, False
            host = self._hosts[0] if self._hosts and self._hosts[0].alive else None
        if host is not None and suspect and not host.responsive(0.25):
            # A call was given up while a vertex held the host's own thread (threads=0): leave that host.
            self._abandon_host(host)
            host = None
        with self._host_lock:
            if host is None or not self._hosts or self._hosts[0] is not host:
                if not self._hosts or not self._hosts[0].alive:
                    self._hosts[:] = [Host()]
            return self._hosts[0]

    def _drop(self, host: Host, request: Request) -> None:
        """The caller gave up on a request (cancelled, interrupted, a stream left early)."""
        self._suspect = True
        host.discard(request)

    def _abandon_host(self, host: Host) -> None:
        """The host's thread is stuck in a vertex: leave it, and start a new one at the next call."""
        with self._host_lock:
            if self._hosts and self._hosts[0] is host:
                self._hosts.clear()
        with contextlib.suppress(RuntimeError):
            host.stop(timeout=0)

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
        found = self._fusion_cache.get(key, _UNPLANNED)
        if found is _UNPLANNED:
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
               None if fusion is None else frozenset(fusion.ops), 0 if choice is None else choice.plan_version)
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        costs = choice.costs if choice is not None and choice.costs else None
        build = self._network_factory(fetch, reverse, shapes, stream, costs, fusion)
        request = Request(key, build, values, trace, pooled, specs, stream)
        host = self._host()
        if choice is not None:
            if choice.network_key is not None and choice.network_key != key:
                host.retire(choice.network_key)  # replaced by a plan from measured costs
            choice.network_key = key
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
            self._drop(host, request)
            raise
        if result is None:
            raise self._timed_out(host, request, timeout)
        return result.unwrap()

    async def _await(self, host: Host, request: Request, timeout: float | None) -> StepState:
        """The request's step, awaited in the caller's trio or asyncio task."""
        if _framework() == "asyncio":
            import asyncio

            try:
                return await asyncio.wait_for(request.wait_asyncio(lambda: self._drop(host, request)), timeout)
            except TimeoutError:
                raise await asyncio.to_thread(self._timed_out, host, request, timeout) from None
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            return await request.wait_async(lambda: self._drop(host, request))
        if scope.cancelled_caught:
            raise await trio.to_thread.run_sync(self._timed_out, host, request, timeout)
        raise ExecutorClosed("the step was cancelled")  # pragma: no cover - move_on_after only cancels itself

    def _network_result(self, state: StepState, fetch, reverse, extra, single, fetched, feeds):
        given_feeds = list(feeds.values()) if hasattr(feeds, "values") else []
        if reverse is None:
            return self._results([state.values[n.id] for n in fetch], fetch, single, given_feeds)
        loss = fetch[0]
        grads = gradient_result(reverse, state.grads, self.backend.to_host, feeds)
        value, *given = self._hand_out([state.values[loss.id], *grads.values()], [loss, *([None] * len(grads))],
                                       given_feeds)
        grads = dict(zip(grads, given))
        if not fetched:
            return value, grads
        return value, grads, self._results([state.values[n.id] for n in extra], extra, single, given_feeds)


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


def _release(hosts: list, pool: WorkerPool | None) -> None:
    """The finalizer: an executor collected without close() stops its host and workers."""
    for host in list(hosts):
        with contextlib.suppress(Exception):
            host.stop(timeout=1.0)
    hosts.clear()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.close(timeout=1.0)
