"""Where an actor's members run: inline on the trio thread, on a worker thread, or on CUDA streams.

Every placement runs a segment's entries with the executor's `VertexRunner`
(the one execution core) and files each value, or Failure, in the actor's
`values`; they differ only in where the call happens:

- `Inline`: right here, on the trio thread (cheap vertices: a thread
  hand-off costs more than they do). A member whose forward is `async def`
  is awaited here in every placement: it waits holding no thread.
- `OnWorker`: one hand-off of the whole segment to the worker pool; BLAS
  calls there take turns through the runner's BLAS lock.
- `OnStreams`: each member's kernels enqueued on the CUDA stream the stream
  plan gives it, after the events of producers on other streams, without
  waiting; the host synchronizes once a step's fetches are complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..core import FORWARD, Failure, VertexRunner, backward_vertex, backward_vertex_async, forward_async, vertex_error
from ..graph import Node
from ..ops.base import derivative_is_async
from ..tape import SegmentProgram, compile_segment
from .program import Entry, Segment


def run_entries(runner: VertexRunner, entries: tuple[Entry, ...], values: dict, trace, lane: str | None,
                ready: float, status=None, pooled=None, queued: float | None = None, expect=None) -> bool:
    """Compute `entries` in order with `runner`, filing each output (or Failure) in `values`; whether
    every member succeeded.

    `status` (the actor's) is told which member runs, so a step that does not
    finish names the vertex it is stuck in. With `expect` (the concrete specs),
    every output is checked against the spec its op declared.
    """
    succeeded = True
    spec_of = (pooled or {}).get
    expected = expect.get if expect is not None else None
    if trace is not None and queued is not None:  # the hand-off: time queued until a worker took it
        picked = time.perf_counter()
        first = next((e.member.name for e in entries if not e.is_source), "?")
        trace.wait("worker", first, None, queued, picked)
        ready = picked
    for entry in entries:
        if entry.is_source:
            continue
        member = entry.member
        if status is not None:
            status.vertex = member
        out = values[member.id] = runner.forward(member, [values[k] for k in entry.inputs], spec_of(member.id),
                                                 trace, lane, ready, entry.op, expected(member.id) if expected else None)
        succeeded = succeeded and type(out) is not Failure
        if trace is not None:
            ready = time.perf_counter()  # the next member had its inputs once this one was done
        for key in entry.free:
            del values[key]
    return succeeded


async def run_awaited(runner: VertexRunner, segment: Segment, values: dict, state, status, lane: str) -> None:
    """A segment of one async member: awaited on the trio thread, holding no worker while it waits."""
    (entry,) = [e for e in segment.entries if not e.is_source]
    member = entry.member
    if status is not None:
        status.vertex = member
    values[member.id] = await forward_async(runner, member, [values[k] for k in entry.inputs], state.trace, lane,
                                            None, state.specs.get(member.id) if state.specs else None)
    for key in entry.free:
        values.pop(key, None)


def run_compiled(program: SegmentProgram, runner: VertexRunner, entries: tuple[Entry, ...], values: dict, status,
                 pooled) -> None:
    """A compiled segment; after a member fails, its Failure in `values` and the rest one at a time."""
    failed = program(values, status)
    if failed is None:
        return
    index, error = failed
    entry = entries[index]
    values[entry.member.id] = Failure(error)
    for key in entry.free:
        values.pop(key, None)
    run_entries(runner, entries[index + 1:], values, None, None, 0.0, status, pooled)


class Compiled:
    """The segments a placement has compiled, per set of fed shapes (the first step of each runs checked)."""

    CHECK = object()

    def __init__(self, runner: VertexRunner):
        self.runner = runner
        self.programs: dict[tuple, SegmentProgram | None] = {}

    def get(self, segment: Segment, state):
        """The segment's program for this step's shapes; CHECK for a first step; None to run it one at a time."""
        specs = state.specs
        if state.trace is not None or self.runner.check_numerics or specs is None:
            return None
        key = (id(segment), id(specs))
        if key not in self.programs:
            self.programs[key] = None
            return self.CHECK
        if self.programs[key] is self.CHECK:  # its checked step failed: check the next one too
            return self.CHECK
        program = self.programs[key]
        if program is None:
            runner = self.runner
            program = self.programs[key] = compile_segment(segment.entries, specs, state.pooled, runner.xp,
                                                           runner.buffers, runner.blas_lock, segment.made,
                                                           segment.shown)
        return program

    def checked(self, segment: Segment, state, succeeded: bool) -> None:
        """A checked step ran: compile the segment next time only if every member gave what it declared
        (a member that failed, its output the wrong shape perhaps, is checked again at the next step)."""
        if state.specs is not None:
            self.programs[(id(segment), id(state.specs))] = None if succeeded else self.CHECK


def _backward_on_worker(runner, reverse, node, total, value_of, trace, queued: float):
    if trace is not None:
        picked = time.perf_counter()
        trace.wait("worker", f"{node.name} (backward)", None, queued, picked)
        return backward_vertex(runner, reverse, node, total, value_of, trace, None, picked)
    return backward_vertex(runner, reverse, node, total, value_of, None)


class Inline:
    """Members computed on the trio thread."""

    lane = "trio"

    def __init__(self, runner: VertexRunner):
        self.runner = runner
        self.compiled = Compiled(runner)

    async def run(self, segment: Segment, values: dict, state, status=None) -> None:
        if segment.awaits:
            return await run_awaited(self.runner, segment, values, state, status, self.lane)
        program = self.compiled.get(segment, state)
        if program is None or program is Compiled.CHECK:
            succeeded = run_entries(self.runner, segment.entries, values, state.trace, self.lane, time.perf_counter(),
                                    status, state.pooled, None, state.specs if program is Compiled.CHECK else None)
            if program is Compiled.CHECK:
                self.compiled.checked(segment, state, succeeded)
        else:
            run_compiled(program, self.runner, segment.entries, values, status, state.pooled)

    async def backward(self, reverse, node: Node, total, value_of, state):
        if derivative_is_async(node.op):
            return await backward_vertex_async(self.runner, reverse, node, total, value_of, state.trace, self.lane)
        return backward_vertex(self.runner, reverse, node, total, value_of, state.trace, self.lane)


class OnWorker:
    """Members handed, a segment at a time, to the worker pool; an actor's segments of cheap members only
    stay on the trio thread (a hand-off costs more than they do).

    `onward`, given by the actor, is called on the worker after each segment: it sends the segment's
    value on and returns the actor's next segment when that can run right there (its inputs in, nothing
    queued before it), so a chain of segments costs one hand-off, not one each."""

    def __init__(self, runner: VertexRunner, pool):
        self.runner = runner
        self.pool = pool
        self.compiled = Compiled(runner)
        self.inline = Inline(runner)  # the same runner: BLAS calls still take turns

    @staticmethod
    def priority(segment: Segment, state) -> tuple:
        """An older step first; within a step, a segment that finishes work begun (it takes a value another
        actor computed) before one that starts more, and then topological order: what joins branches runs as
        they come in instead of after the last one, and their buffers are let go sooner."""
        return (state.submitted, not segment.joins, segment.entries[-1].member.id)

    async def run(self, segment: Segment, values: dict, state, status=None, onward=None) -> None:
        if segment.awaits:  # an async member holds no worker: its actor awaits it
            return await run_awaited(self.runner, segment, values, state, status, "trio")
        if not segment.on_worker:
            return await self.inline.run(segment, values, state, status)
        job = self._job(segment, values, lambda: state, status, onward)
        self.pool.put(job)
        await self._wait(job, lambda: state)

    async def run_when_in(self, segment: Segment, values: dict, state_of, status, onward, mailbox, step: int) -> float:
        """Run a worker segment whose inputs are not all in yet (its step perhaps not begun: `state_of()`
        gives the step's state once it has): the thread posting the last of them queues it (a worker does
        so itself). Returns when they were all in."""
        job = self._job(segment, values, state_of, status, onward)
        mailbox.start_when_in(step, FORWARD, segment.keys, job, values, self.pool)
        await self._wait(job, state_of)
        return job.queued

    def _job(self, segment: Segment, values: dict, state_of, status, onward):
        job = self.pool.job(self._segments, segment, values, state_of, status, onward)
        job.args += (job,)  # the segments read when it was queued (the hand-off's wait, in a trace)

        def before_put(job) -> None:  # its inputs are in, so its step has begun
            state = state_of()
            job.priority = self.priority(segment, state)
            if state.trace is not None:
                self._count(state.trace, time.perf_counter(), queued=1)

        job.before_put = before_put
        return job

    async def _wait(self, job, state_of) -> None:
        await job.wait()
        trace = state_of().trace
        if trace is not None:
            self._count(trace, time.perf_counter())

    def _segments(self, segment: Segment, values: dict, state_of, status, onward, job) -> None:
        """On a worker: the segment, then each next one `onward` gives."""
        state = state_of()
        trace = state.trace
        ready, handed = job.queued, (job.queued if trace is not None else None)
        while segment is not None:
            if status is not None:
                status.running(segment.entries[0].member)
            program = self.compiled.get(segment, state)
            if program is not None and program is not Compiled.CHECK:
                run_compiled(program, self.runner, segment.entries, values, status, state.pooled)
            else:
                succeeded = run_entries(self.runner, segment.entries, values, trace, None, ready, status,
                                        state.pooled, handed, state.specs if program is Compiled.CHECK else None)
                if program is Compiled.CHECK:
                    self.compiled.checked(segment, state, succeeded)
            segment = onward(segment) if onward is not None else None
            ready, handed = time.perf_counter(), None  # a segment taken on: its inputs were in, no hand-off

    def _count(self, trace, at: float, queued: int = 0) -> None:
        """Counter samples of the pool: calls waiting for a worker (this one included), workers busy."""
        trace.counter("workers", "queued", self.pool.queued() + queued, at)
        trace.counter("workers", "busy", self.pool.busy, at)

    async def backward(self, reverse, node: Node, total, value_of, state):
        if derivative_is_async(node.op):
            return await backward_vertex_async(self.runner, reverse, node, total, value_of, state.trace, "trio")
        # Derivatives in reverse topological order, the same step before the next.
        return await self.pool.run(_backward_on_worker, self.runner, reverse, node, total, value_of, state.trace,
                                   time.perf_counter(), priority=(state.submitted, -node.id))


@dataclass(frozen=True)
class Launch:
    """What a kernel launch was, for its span: the vertex, the step, its input shapes."""

    member: Node
    step: int
    shapes: tuple
    trace: Any = None


class OnStreams:
    """Members launched on their planned CUDA streams (or on `CheckedStreams`, emulating them)."""

    def __init__(self, runner: VertexRunner, runtime, stream_plan):
        self.runner = runner
        self.runtime = runtime
        self.plan = stream_plan

    async def run(self, segment: Segment, values: dict, state, status=None) -> None:
        if segment.awaits:
            return await run_awaited(self.runner, segment, values, state, status, "trio")
        plan, runtime = self.plan, self.runtime
        trace, slot = state.trace, state.slot
        step = trace.step if trace is not None else 0
        runtime.timed = trace is not None
        for entry in segment.entries:
            if entry.is_source:
                continue
            member = entry.member
            args = [values[k] for k in entry.inputs]
            box: dict[str, Any] = {}

            def kernels(member=member, args=args, box=box, op=entry.op):
                box["out"] = self.runner.forward(member, args, op=op)

            tag = Launch(member, step, tuple(tuple(getattr(a, "shape", ())) for a in args), trace)
            try:
                runtime.launch(plan.stream[member.id], kernels, plan.waits.get(member.id, ()),
                               plan.record.get(member.id), tag=tag, slot=slot)
            except Exception as exc:  # a launch the runtime refused (an event never recorded, ...)
                box["out"] = Failure(vertex_error(member, args, exc, "forward"))
            values[member.id] = box["out"]
            for key in entry.free:
                del values[key]

    async def backward(self, reverse, node: Node, total, value_of, state):
        # Derivative kernels go on the current stream, after the step's forward (see Network._backward).
        return backward_vertex(self.runner, reverse, node, total, value_of, state.trace, "cuda-current-stream")

    def step_done(self, slot: int, trace) -> None:
        """The step's fetches are complete: wait for its kernels, file their spans, free its events."""
        self.runtime.synchronize()
        if trace is not None:
            for span in self.runtime.take_spans(lambda tag: tag.step == trace.step and tag.trace is trace):
                tag = span.tag
                trace.record(tag.member, "forward", f"cuda-stream-{span.stream}", span.start, span.start, span.start,
                             span.end, None, [_Shaped(s) for s in tag.shapes])
        self.runtime.release(slot)


class _Shaped:
    """Stands in for an array in a span's record: only its shape is read."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape
