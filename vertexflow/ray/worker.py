"""One partition's process: a Ray actor running vertexflow's own executor on its sub-graph.

A worker holds one *program* per partitioning it serves (one per call
signature of the RayExecutor: which vertices are fetched, which loss): the
partition's sub-graph, rebuilt here from a picklable recipe, and an executor
of it. `forward` takes the step's sources (feeds through Ray's object store)
and the values earlier partitions sent, runs the executor, and returns what
the driver fetches and, separately, what each later partition reads (one
object per reader, passed on actor to actor without the driver). With
backward, it keeps the values its derivative rules need until `backward`
sums each vertex's edge gradients in the global plan's fixed order (remote
ones arrive one per edge, never pre-summed) and sends earlier partitions the
edge gradients of their vertices: values and gradients come out bit for bit
as `SequentialExecutor`'s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Recipe:
    """A partition's sub-graph as picklable parts, in topological order.

    entries: ("input", name, shape, dtype) for feeds and values from other partitions,
    ("param", name, array), ("const", name, array), ("op", name, op, [input names], origin).
    """

    graph_name: str
    entries: list[tuple]


@dataclass
class Program:
    """What one call signature runs in this partition (names are the original vertices')."""

    waves: list[Recipe]  # wave 0 needs nothing from other partitions, wave 1 the rest
    fetch: list[str]  # values the driver gets
    sends: list[tuple[int, list[str]]]  # (reader partition, the values it reads)
    keep: list[str] = field(default_factory=list)  # op values the backward needs
    # backward: the partition's part of the global reverse plan
    order: list[str] = field(default_factory=list)  # its vertices in the plan's order (ops and homed sources)
    incoming: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outgoing: dict[str, tuple[int, ...]] = field(default_factory=dict)
    needs: dict[str, tuple[bool, ...]] = field(default_factory=dict)
    wrt: list[str] = field(default_factory=list)
    seed: str | None = None  # the loss, when it is here
    sends_back: list[tuple[int, list[int]]] = field(default_factory=list)  # (partition, edge indices)

    def entries(self) -> list[tuple]:
        return [e for wave in self.waves for e in wave.entries]


class _Plan:
    """The two fields of a ReversePlan that `backward_vertex` reads, for one vertex."""

    def __init__(self, outgoing: dict[int, tuple[int, ...]], needs: dict[int, tuple[bool, ...]]):
        self.outgoing, self.needs = outgoing, needs


class _Wave:
    """One wave's sub-graph and its executor."""

    def __init__(self, recipe: Recipe, kind: str, options: dict):
        from ..factory import make_executor
        from ..graph import Graph

        graph = Graph(recipe.graph_name)
        nodes = {}
        for entry in recipe.entries:
            what, name = entry[0], entry[1]
            if what == "input":
                nodes[name] = graph.input(name, shape=entry[2], dtype=entry[3])
            elif what == "param":
                nodes[name] = graph.param(name, value=entry[2])
            elif what == "const":
                nodes[name] = graph.const(entry[2], name=name)
            else:
                nodes[name] = graph.add_vertex(entry[2], [nodes[i] for i in entry[3]], name=name)
                nodes[name].origin = entry[4]  # where the user built it, for error messages
        self.graph, self.nodes = graph, nodes
        self.ops = [n for n, node in nodes.items() if node.kind == "op"]
        self.inputs = [n for n, node in nodes.items() if node.kind == "input"]
        self.executor = make_executor(graph, kind, **options) if self.ops else None


class _Built:
    def __init__(self, program: Program, kind: str, options: dict):
        self.program = program
        self.waves = [_Wave(recipe, kind, options) for recipe in program.waves]
        # every vertex by name: the op where it is computed, else the first wave's source node
        self.nodes: dict[str, Any] = {}
        for wave in self.waves:
            for name, node in wave.nodes.items():
                if node.kind == "op" or name not in self.nodes:
                    self.nodes[name] = node
        self.runner = next((w.executor.runner for w in self.waves if w.executor is not None), None)
        self.kept: dict[int, dict[str, Any]] = {}  # step -> values for its backward


def _returns(driver: dict, sends: list[dict]):
    """A call's results as Ray's num_returns=1+len(sends) wants them (one object is not a tuple)."""
    return (driver, *sends) if sends else driver


@contextlib.contextmanager
def _marked(index: int):
    """Errors raised here carry the partition's number to the driver (errors that came from an
    earlier partition through Ray already carry theirs)."""
    try:
        yield
    except BaseException as exc:
        import ray

        if not isinstance(exc, ray.exceptions.RayTaskError) and not hasattr(exc, "partition"):
            try:
                exc.partition = index
            except AttributeError:  # an exception type without a __dict__
                pass
        raise


class PartitionWorker:
    """The body of the Ray actor of one partition (see the module's docstring)."""

    def __init__(self, index: int, kind: str, options: dict, blas_threads: int | None):
        self.index, self.kind, self.options = index, kind, dict(options)
        self.programs: dict[int, _Built] = {}
        self._blas = None
        if blas_threads:
            from ..machine import _blas_controller

            self._blas = _blas_controller().limit(limits=int(blas_threads))  # kept for the process's life
        self._lock = threading.Lock()

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "perf": time.perf_counter(), "wall": time.time()}

    def where(self) -> dict[str, str]:
        """{vertex: what it is doing} for the vertices this process is in now (runs on the status thread)."""
        from ..tape import running_vertices

        return running_vertices()

    def prepare(self, key: int, program: Program) -> None:
        with _marked(self.index):
            self.programs[key] = _Built(program, self.kind, self.options)

    def set_params(self, values: dict[str, Any]) -> None:
        """New param values (by name, arrays or ObjectRefs), for every program that holds the param:
        in force from the next step."""
        import ray

        values = {k: ray.get(v) if isinstance(v, ray.ObjectRef) else v for k, v in values.items()}
        for built in self.programs.values():
            for wave in built.waves:
                for name, value in values.items():
                    node = wave.nodes.get(name)
                    if node is not None and node.kind == "param":
                        node.value = value

    def forward(self, key: int, step: int, sources: dict[str, Any], incoming: list, keep: bool, trace: bool):
        """(for the driver, *one dict per reader partition): the step's values."""
        with _marked(self.index):
            driver, sends = self._forward(key, [step], [sources], incoming, keep, trace)
            return _returns({"values": driver["values"][0], "trace": driver["trace"]}, [d[0] for d in sends])

    def forward_chunk(self, key: int, steps: list[int], sources: list[dict[str, Any]], incoming: list, trace: bool):
        """`forward` for several steps of a stream in one call (one Ray round trip for all of them):
        each result holds one entry per step."""
        with _marked(self.index):
            driver, sends = self._forward(key, steps, sources, incoming, False, trace)
            return _returns(driver, sends)

    def backward(self, key: int, step: int, incoming: list, trace: bool):
        """(for the driver, *one dict of edge gradients per earlier partition)."""
        with _marked(self.index):
            return self._backward(key, step, incoming, trace)

    def _forward(self, key, steps, sources, incoming, keep, trace):
        import ray

        from ..trace.tracer import Tracer

        built = self.programs[key]
        program = built.program
        transfers: list[tuple] = []
        waits: list[tuple] = []  # (what, vertex, start, end): waiting for another partition's values
        feeds = [self._resolved(step_sources, transfers) for step_sources in sources]
        wanted = set(program.fetch) | {n for _, ns in program.sends for n in ns} | (set(program.keep) if keep else set())
        tracer = Tracer() if trace else None
        step_of: dict[str, list[int]] = {"spans": [], "waits": [], "slices": [], "counters": []}
        values: list[dict[str, Any]] = [{} for _ in steps]
        for index, wave in enumerate(built.waves):
            if index == 1:  # where values from earlier partitions are first read
                for ref in incoming:
                    asked = time.perf_counter()
                    ray.wait([ref], num_returns=1)  # the producer's partition still computing
                    arrived = time.perf_counter()
                    parts = ray.get(ref)  # the bytes moving (from the object store) and read
                    got = time.perf_counter()
                    parts = parts if isinstance(parts, list) else [parts]
                    names = ", ".join(parts[0])[:60]
                    waits.append(("producer", names, asked, arrived))
                    transfers.append((f"receive {names}", arrived, got,
                                      int(sum(getattr(v, "nbytes", 0) for part in parts for v in part.values()))))
                    for step_feeds, part in zip(feeds, parts):
                        step_feeds.update(part)
            if wave.executor is None:
                continue
            later = set().union(*(w.inputs for w in built.waves[index + 1:])) if index + 1 < len(built.waves) else set()
            fetch = [n for n in wave.ops if n in wanted or n in later]
            if not fetch:
                continue
            for step, step_feeds, step_values in zip(steps, feeds, values):
                given = {n: step_values[n] if n in step_values else step_feeds[n] for n in wave.inputs}
                step_values.update(zip(fetch, self._run(wave, given, fetch, tracer)))
                if tracer is not None:  # which of the chunk's steps what was just recorded belongs to
                    for kind, recorded in (("spans", tracer._raw), ("waits", tracer.waits),
                                           ("slices", tracer.slices), ("counters", tracer.counters)):
                        step_of[kind].extend([step] * (len(recorded) - len(step_of[kind])))
        for step_feeds, step_values in zip(feeds, values):
            for n in wanted:
                if n not in step_values:
                    node = built.nodes[n]
                    step_values[n] = step_feeds[n] if node.kind == "input" else np.array(node.value)
        if keep:
            for step, step_feeds, step_values in zip(steps, feeds, values):
                built.kept[step] = {**step_feeds, **step_values}
        driver = {"values": [{n: v[n] for n in program.fetch} for v in values],
                  "trace": self._trace_payload(tracer, transfers, step_of, waits) if trace else None}
        sends = [[{n: v[n] for n in ns} for v in values] for _, ns in program.sends]
        return driver, sends

    @staticmethod
    def _resolved(sources: dict[str, Any], transfers: list) -> dict[str, Any]:
        import ray

        feeds = {}
        for name, value in sources.items():
            if isinstance(value, ray.ObjectRef):
                start = time.perf_counter()
                value = ray.get(value)
                transfers.append((f"receive {name}", start, time.perf_counter(), int(getattr(value, "nbytes", 0))))
            feeds[name] = value
        return feeds

    @staticmethod
    def _run(wave: _Wave, given: dict, fetch: list[str], tracer) -> list:
        if tracer is None:
            return wave.executor.run(given, fetch)
        from ..trace.tracer import trace as tracing

        with tracing(tracer):
            return wave.executor.run(given, fetch)

    def _backward(self, key, step, incoming, trace):
        import ray

        from ..autodiff.namespace import ArrayMath
        from ..core import Failure, backward_vertex, seed_gradient, total_gradient
        from ..trace.tracer import Tracer

        built = self.programs[key]
        program = built.program
        kept = built.kept.pop(step)
        edges: dict[int, Any] = {}
        transfers = []
        for ref in incoming:
            start = time.perf_counter()
            part = ray.get(ref)
            transfers.append((f"receive gradients {len(part)}", start, time.perf_counter(),
                              int(sum(getattr(v, "nbytes", 0) for v in part.values()))))
            edges.update(part)
        nodes = built.nodes
        values = dict(kept)
        for name, node in nodes.items():
            if name not in values and node.kind in ("param", "const"):
                values[name] = node.value
        if program.seed is not None:
            edges[0] = seed_gradient(np, kept[program.seed])
        tracer = Tracer() if trace else None
        step_trace = tracer.step_trace(built.waves[-1].executor or built.waves[0].executor) \
            if tracer is not None else None
        add = ArrayMath(np).add
        wrt, results = set(program.wrt), {}
        with np.errstate(all="ignore"):
            for name in program.order:
                total = total_gradient(add, [edges.pop(i, None) for i in program.incoming.get(name, ())])
                if name in wrt and total is not None:
                    results[name] = total
                node = nodes[name]
                if node.kind != "op" or total is None:
                    continue
                # vertex ids repeat across the waves' sub-graphs: the plan's entries go by name, one at a time
                plan = _Plan({node.id: program.outgoing[name]}, {node.id: program.needs[name]})
                for edge, gi in backward_vertex(built.runner, plan, node, total, lambda n: values[n.name],
                                                step_trace):
                    if type(gi) is Failure:
                        raise gi.error
                    edges[edge] = gi
        for value in results.values():
            if type(value) is Failure:
                raise value.error
        driver = {"grads": results, "trace": self._trace_payload(tracer, transfers) if trace else None}
        return _returns(driver, [{e: edges.get(e) for e in es} for _, es in program.sends_back])

    def drop(self, step: int) -> None:
        """Forget a step's kept values (its backward will not come)."""
        for built in self.programs.values():
            built.kept.pop(step, None)

    @staticmethod
    def _trace_payload(tracer, transfers, step_of: dict | None = None, producer_waits=()) -> dict:
        """What this partition recorded, for the driver's tracer: spans, events, waits (its executors'
        and its waits for earlier partitions), step slices, counters, transfers, and each one's step."""
        if tracer is None:
            return {"spans": [], "events": [], "transfers": transfers, "pid": os.getpid()}
        step_of = step_of or {}
        waits = [(w.what, w.vertex, w.lane, w.start, w.end) for w in tracer.waits]
        return {"spans": list(tracer.spans), "events": list(tracer.events), "transfers": transfers,
                "waits": waits, "producer_waits": list(producer_waits),
                "slices": [(sl.start, sl.end) for sl in tracer.slices],
                "counters": [(c.group, c.series, c.time, c.value) for c in tracer.counters],
                "pid": os.getpid(), "steps": step_of.get("spans"), "step_of": step_of}
