"""Streams through the actor executor: steps in input order, at most `depth` in flight.

`stream_steps` turns an iterable of feeds into steps to resolve in order: a
`_TapeStep` (run on the tape when its turn comes) or a `_Pending` step handed
to the host at once, so that step k+1 enters the network while step k is
still in deeper vertices. While the executor decides, blocks of steps
alternate between the tape and the network, each block timed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from functools import partial

from ..core import off_loop
from ..executor import Feeds
from ..graph import Node
from .network import StepState
from .schedule import TAPE, Profile


class _TapeStep:
    """A stream step to run on the tape when its turn comes (on the caller's thread, or off a trio loop)."""

    __slots__ = ("fn", "trace")

    def __init__(self, fn, trace=None):
        self.fn, self.trace = fn, trace

    def resolve(self):
        start = time.perf_counter()
        result = self.fn()
        if self.trace is not None:
            self.trace.slice(start, time.perf_counter())  # the step, from its turn to its result
        return result

    async def resolve_async(self):
        return await off_loop(self.resolve)


class _Pending:
    """A stream step handed to the host, resolved (waited for) when its turn comes to be yielded."""

    __slots__ = ("executor", "host", "request", "nodes", "single", "choice", "started", "timeout")

    def __init__(self, executor, host, request, nodes, single, choice, started, timeout=None):
        self.executor, self.host, self.request = executor, host, request
        self.nodes, self.single, self.choice, self.started = nodes, single, choice, started
        self.timeout = timeout

    def _done(self, state: StepState):
        return self.executor._results([state.values[n.id] for n in self.nodes], self.nodes, self.single)

    def resolve(self):
        return self._done(self.executor._wait(self.host, self.request, self.timeout))

    async def resolve_async(self):
        return self._done(await self.executor._await(self.host, self.request, self.timeout))

    def drop(self) -> None:
        self.executor._drop(self.host, self.request)


def stream_steps(ex, feeds_iterable: Iterable[Feeds], nodes: list[Node], single: bool,
                 depth: int | None, timeout: float | None = None):
    """The steps of a stream in input order: results (tape) or `_Pending` steps (network), at most `depth` ahead.

    While the executor decides, blocks of steps alternate between the tape and
    the network, each block timed from its first result to its last. With
    `timeout`, each step's result must come within that many seconds of the
    stream asking for it (ExecutionTimeout naming what it waits for otherwise).
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
                yield _TapeStep(partial(ex._tape.run_nodes, feeds, nodes, single, timeout,
                                        Profile(choice.costs, trace) if first else trace), trace)
                if first:
                    ex._after_profile(choice, nodes, None, ex._feeds(feeds, sources), stream=True)
                    if choice.mode is not None:
                        block_left = math.inf  # decided: the rest of the stream runs this way
                continue
            while len(pending) >= limit:
                yield pending.popleft()
            host, request, _ = ex._request(nodes, None, feeds, ex._trace(tracer, step, run), stream=True, choice=choice)
            step += 1
            pending.append(_Pending(ex, host, request, nodes, single, choice, time.perf_counter(), timeout))
        while pending:
            yield pending.popleft()
    finally:
        for step in pending:
            step.drop()


