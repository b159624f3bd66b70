"""StreamExecutor: a graph launched on planned streams, each vertex after the events it needs.

On `device="cuda"` the streams are CUDA streams (`gpu.CupyStreams`): the
host launches every kernel without waiting and synchronizes only to hand
back the fetches. On the CPU (`device="cpu"` or `"emulated-cuda"`) they are
emulated by threads (`gpu.EmulatedStreams`), which runs the same plan and
event logic and gives the same bits as the SequentialExecutor. Each vertex
runs through the execution core (`core.VertexRunner`), as in every executor.
Tracing records one span per vertex with its stream as the lane, timed by
CUDA events on a device. `backward` runs the forward and the reverse sweep
on the tape, on the same device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

from .core import Failure, cancel_awaits, check_timeout, concrete_specs, forward_async, run_awaitable, timeout_error
from .executor import Executor, Feeds, Fetch, SequentialExecutor
from .gpu.runtime import CupyStreams, EmulatedStreams
from .gpu.streams import StreamPlan, plan_streams
from .graph import Graph, Node, ancestors
from .ops.base import is_async


class StreamExecutor(Executor):
    """Runs a graph on at most `streams` streams (CUDA, or threads on a CPU)."""

    def __init__(self, graph: Graph, streams: int = 4, **options):
        super().__init__(graph, **options)
        self.streams = streams
        self._stream_plans: dict[tuple, StreamPlan] = {}
        self._tape = SequentialExecutor(graph, device=self.backend.name, tracer=self.tracer,
                                        check_numerics=self.check_numerics)

    def plan(self, fetch: Fetch | Sequence[Fetch]) -> StreamPlan:
        nodes, _ = self._fetches(fetch)
        key = tuple(n.id for n in nodes)
        plan = self._stream_plans.get(key)
        if plan is None:
            plan = self._stream_plans[key] = plan_streams(nodes, self.streams)
        return plan

    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        called = time.perf_counter()
        timeout = check_timeout(timeout)
        nodes, single = self._fetches(fetch)
        plan = self.plan(nodes)
        sources = [n for n in ancestors(nodes) if n.kind != "op"]
        checked = self._feeds(feeds, sources)
        specs = concrete_specs([*sources, *plan.order], checked)  # shapes that fit every vertex, before any runs
        values = {n.id: checked[n.id] if n.kind == "input" else self._device_value(n) for n in sources}
        self.backend.uploaded()
        tracer = self._tracer()
        if self.backend.name == "cuda":
            runtime = CupyStreams(plan.streams, len(plan.record), timed=tracer is not None)
        else:
            runtime = EmulatedStreams(plan.streams, len(plan.record))
        forward = self.runner.forward

        def launch(v: Node):
            def kernels():
                args = [values[i.id] for i in v.inputs]
                # Every output checked against what its op declared (a user op that returns another shape
                # fails here, named, not in the vertex after it).
                if is_async(v.op):  # awaited in a trio loop of the stream's own thread
                    values[v.id] = run_awaitable(partial(forward_async, self.runner, v, args, expect=specs[v.id]))
                else:
                    values[v.id] = forward(v, args, expect=specs[v.id])

            return kernels

        for v in plan.order:
            runtime.launch(plan.stream[v.id], launch(v), plan.waits.get(v.id, ()), plan.record.get(v.id), tag=v)
        if not runtime.synchronize(timeout):
            error = timeout_error(timeout, self._waiting(plan, runtime, values))
            if isinstance(runtime, EmulatedStreams):  # async vertices stop waiting: their threads end
                cancel_awaits(runtime.thread_idents())
            raise error
        if tracer is not None:
            trace = tracer.step_trace(self)
            lane = "cuda-stream-{}" if self.backend.name == "cuda" else "stream-{}"
            spans = runtime.spans if isinstance(runtime, EmulatedStreams) else runtime.take_spans(lambda tag: True)
            for span in spans:
                v = span.tag
                trace.record(v, "forward", lane.format(span.stream), span.start, span.start, span.start, span.end,
                             None, [values.get(i.id) for i in v.inputs])
        for n in nodes:
            if type(values[n.id]) is Failure:
                raise values[n.id].error
        result = self._results([values[n.id] for n in nodes], nodes, single, checked.values())
        if tracer is not None:
            trace.slice(called, time.perf_counter())  # the call, from entry to return
        return result

    def _waiting(self, plan: StreamPlan, runtime, values: dict) -> dict[str, str]:
        running = {id(tag): stream for stream, tag in dict(getattr(runtime, "running", {})).items()}
        out = {}
        for v in plan.order:
            if v.id in values:
                continue
            stream = plan.stream[v.id]
            if id(v) in running:
                out[v.name] = f"running {v.op_name} to return (stream {stream})"
            else:
                out[v.name] = f"its turn on stream {stream}"
        return out

    def trace_options(self) -> dict:
        return {"streams": self.streams, "device": self.backend.name}

    def close(self) -> None:
        """Stop the threads it holds (its tape's, made by a backward with timeout=)."""
        self._tape.close()

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        """Forward and reverse sweep on the tape, on this executor's device (same values and gradients)."""
        return self._tape.backward(feeds, loss, wrt, fetch=fetch, timeout=timeout)
