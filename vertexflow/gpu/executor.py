"""StreamExecutor: a graph launched on planned streams, each vertex after the events it needs.

On `device="cuda"` the streams are CUDA streams (`CupyStreams`): the host
launches every kernel without waiting and synchronizes only to hand back the
fetches. On the CPU (`device="cpu"` or `"emulated-cuda"`) they are emulated by threads (`EmulatedStreams`),
which runs the same plan and event logic, and must give the same bits as the
SequentialExecutor. Tracing records one span per vertex with its stream as
the lane, timed by CUDA events on a device.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import VertexError, VertexflowError
from ..executor import Executor, Feeds, Fetch, vertex_error
from ..graph import Graph, Node, ancestors
from .runtime import CupyStreams, EmulatedStreams
from .streams import StreamPlan, plan_streams


class StreamExecutor(Executor):
    """Runs a graph on at most `streams` streams (CUDA, or threads on a CPU)."""

    def __init__(self, graph: Graph, streams: int = 4, **options):
        super().__init__(graph, **options)
        self.streams = streams
        self._stream_plans: dict[tuple, StreamPlan] = {}
        self._tape = None  # a SequentialExecutor on the same device, for backward

    def plan(self, fetch: Fetch | Sequence[Fetch]) -> StreamPlan:
        nodes, _ = self._fetches(fetch)
        key = tuple(n.id for n in nodes)
        plan = self._stream_plans.get(key)
        if plan is None:
            plan = self._stream_plans[key] = plan_streams(nodes, self.streams)
        return plan

    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        nodes, single = self._fetches(fetch)
        plan = self.plan(nodes)
        sources = [n for n in ancestors(nodes) if n.kind != "op"]
        checked = self._feeds(feeds, sources)
        values = {n.id: checked[n.id] if n.kind == "input" else self._device_value(n) for n in sources}
        self.backend.uploaded()
        if self.backend.name == "cuda":
            runtime = CupyStreams(plan.streams, len(plan.record), timed=self._tracer() is not None)
        else:
            runtime = EmulatedStreams(plan.streams, len(plan.record))
        xp, failures = self.xp, {}

        def launch(v: Node):
            def fn():
                failed = next((i.id for i in v.inputs if i.id in failures), None)
                if failed is not None:  # a failure travels on instead of a value
                    failures[v.id] = failures[failed]
                    return
                args = [values[i.id] for i in v.inputs]
                try:
                    values[v.id] = v.op.forward(xp, *args)
                except Exception as exc:
                    err = vertex_error(v, args, exc, "forward")
                    err.__cause__ = exc
                    failures[v.id] = err

            return fn

        for v in plan.order:
            runtime.launch(plan.stream[v.id], launch(v), plan.waits.get(v.id, ()), plan.record.get(v.id), tag=v)
        try:
            runtime.synchronize()
        except VertexflowError:
            raise
        except Exception as exc:
            raise VertexError(f"stream runtime failed: {exc}", vertex="?", op="?") from exc
        tracer = self._tracer()
        if tracer is not None:
            step = self._next_step()
            lane = "cuda-stream-{}" if self.backend.name == "cuda" else "stream-{}"
            for stream, v, start, end in runtime.spans:
                tracer.record(v, "forward", step, lane.format(stream), start, start, end,
                              [values.get(i.id) for i in v.inputs])
        for n in nodes:
            if n.id in failures:
                raise failures[n.id]
        return self._results([values[n.id] for n in nodes], single)

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        """Runtime reverse mode on the tape after a forward on streams is not offered yet:
        use SequentialExecutor or ActorExecutor on the same device."""
        from ..executor import SequentialExecutor

        if self._tape is None:
            self._tape = SequentialExecutor(self.graph, device=self.backend.name, tracer=self.tracer,
                                            check_numerics=self.check_numerics)
        return self._tape.backward(feeds, loss, wrt, fetch=fetch, timeout=timeout)
