"""RayExecutor: a graph's partitions as Ray actors, each running vertexflow's own executor.

The driver (this process) plans, one plan per call signature (the fetched
vertices, the loss and what it is differentiated by): it measures each
vertex's time once on the tape, cuts the vertices into partitions
(`partition`), and gives partition p's sub-graph to the p-th Ray actor
(`worker`). A step is one `forward` call per partition, submitted at once:
a partition's call takes the ObjectRefs of the values earlier partitions
send it, so values go actor to actor through Ray's object store and never
through the driver, and Ray starts each call when its inputs exist. Backward
is one call per partition in reverse, passing edge gradients back the same
way. A stream keeps up to `depth` steps in flight: each actor runs its calls
in order, so partition 0 computes step s+1 while partition 1 computes step s.

Feeds are put in the object store once per step and read zero-copy by
actors on the same node; each param is sent to the partitions that read it
once per change (an assignment to `p.value`, as the optimizers make, is in
force at the next step everywhere).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np

from ..autodiff.reverse import ReversePlan
from ..core import gradient_result
from ..errors import (
    ExecutionTimeout,
    ExecutorClosed,
    GraphError,
    MissingExtraError,
    PartitionLost,
    VertexError,
    VertexflowError,
)
from ..executor import Executor, Feeds, Fetch, SequentialExecutor
from ..graph import Graph, Node, ancestors
from . import partition as cutting
from .worker import PartitionWorker, Program, Recipe


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("RayExecutor needs Ray: pip install 'ray[default]' (or, in a checkout, "
                                "pip install -e '.[ray]')") from exc
    return ray


PLACE_TIMEOUT = 300.0  # seconds to wait for a partition's actor to start and take its program
KILL_WAIT = 10.0  # seconds close() waits for each killed actor to be gone


CHUNK_WORK = 0.04  # seconds of the busiest partition's work a stream call carries (RayExecutor._chunk)


class _Call:
    """One call signature's plan: the partitioning, and what each partition runs and sends."""

    def __init__(self, key: int, targets: list[Node], partitioning: cutting.Partitioning, costs: dict[int, float],
                 reverse: ReversePlan | None, fetch: list[Node]):
        self.key, self.targets, self.partitioning, self.costs = key, targets, partitioning, costs
        self.reverse, self.fetch = reverse, fetch
        self.inputs_of: list[list[Node]] = []  # graph inputs each partition reads
        self.readers_of: list[list[int]] = []  # partitions each partition sends to, in order
        self.senders_to: list[list[int]] = []  # partitions each partition receives from
        self.back_to: list[list[int]] = []  # partitions each partition sends edge gradients to
        self.back_from: list[list[int]] = []
        self.fetched_in: dict[int, int] = {}  # fetched op id -> partition
        self.programs: list[Program] = []  # per partition
        self.needed_inputs: list[Node] | None = None
        self.shared_inputs: set[int] = set()  # inputs read by more than one partition
        self.params_of: list[list[Node]] = []  # params each partition holds
        self.wrt_home: dict[int, int] = {}


class RayExecutor(Executor):
    """Run a graph as `partitions` Ray actors, pipelined, with values and gradients bit for bit
    `SequentialExecutor`'s.

    Args:
        graph: the graph.
        partitions: how many partitions (Ray actors) to cut it into.
        executor: the executor each partition runs on its sub-graph ("actor" or "sequential").
        placement: {vertex or name: partition} for vertices you place yourself; each other one goes
            with the earliest partition that reads it (not before its inputs'). Partition numbers
            must follow the data: a partition reads only from partitions before it.
        num_cpus, num_gpus: Ray resources per partition (default: the cluster's CPUs shared out,
            at most 1 each).
        placement_group: a Ray placement group to schedule the partitions in (partition p in bundle
            p modulo its bundles), e.g. to spread them over nodes.
        address: the Ray cluster to connect to when Ray is not initialized yet (default: RAY_ADDRESS,
            else a local cluster is started).
        blas_threads: BLAS threads in each partition; default the driver's, so matrix products round
            as they do here (parity).
        depth: steps in flight in `run_stream` (default 2 per partition).
        **executor_options: passed to each partition's executor (threads=, schedule=, ...).
    """

    def __init__(self, graph: Graph, partitions: int = 2, executor: str = "actor", *,
                 placement: Mapping[Node | str, int] | None = None, num_cpus: float | None = None,
                 num_gpus: float = 0, placement_group=None, address: str | None = None,
                 blas_threads: int | None = None, depth: int | None = None, **executor_options):
        super().__init__(graph)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise GraphError(f"partitions must be an int >= 1, got {partitions!r}")
        if executor not in ("actor", "sequential"):
            raise GraphError(f"executor must be 'actor' or 'sequential', got {executor!r}")
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.partitions = partitions
        self.kind = executor
        self.executor_options = dict(executor_options)
        self.placement = dict(placement) if placement else None
        if self.placement:
            for item in self.placement:
                graph.resolve(item)
        cluster = float(ray.cluster_resources().get("CPU", 1.0))
        self.num_cpus = min(1.0, cluster / partitions) if num_cpus is None else float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.placement_group = placement_group
        if blas_threads is None:
            from ..machine import blas_info

            counts = [lib["num_threads"] for lib in blas_info() if lib.get("num_threads")]
            blas_threads = min(counts) if counts else None
        self.blas_threads = blas_threads
        self.depth = 2 * partitions if depth is None else int(depth)
        self._workers: list[Any] = [None] * partitions
        self._infos: list[dict | None] = [None] * partitions
        self._calls: dict[tuple, _Call] = {}
        self._keys = itertools.count(1)
        self._prepared: list[set[int]] = [set() for _ in range(partitions)]
        self._sent_params: list[dict[int, int]] = [dict() for _ in range(partitions)]  # param id -> id(value)
        self._steps = itertools.count()
        self._closed = False

    # -- the actors ----------------------------------------------------------------------
    def _worker(self, p: int):
        if self._closed:
            raise ExecutorClosed("this RayExecutor was closed; make a new one")
        if self._workers[p] is None:
            ray = _ray()
            options = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0}
            if self.placement_group is not None:
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                bundles = len(self.placement_group.bundle_specs)
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=p % bundles)
            # "status": a thread of its own for `where`, so a partition past its deadline can say what it runs
            actor = ray.remote(concurrency_groups={"status": 1})(PartitionWorker).options(**options)
            self._workers[p] = actor.remote(p, self.kind, self.executor_options, self.blas_threads)
            self._prepared[p] = set()
            self._sent_params[p] = {}
            self._infos[p] = None
        return self._workers[p]

    def _info(self, p: int) -> dict:
        """The partition's process (pid, node) and its clock's offset onto ours (for the trace)."""
        if self._infos[p] is None:
            ray = _ray()
            try:
                info = ray.get(self._worker(p).info.remote(), timeout=PLACE_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                self._restart([p])
                raise ExecutionTimeout(f"partition {p} was not placed within {PLACE_TIMEOUT:g} s: the cluster has no "
                                       f"room for {self.num_cpus:g} CPU, {self.num_gpus:g} GPU more") from None
            # At the worker's instant (perf, wall), our perf_counter read wall - (now_wall - now_perf)
            # ago; on one machine the wall clocks are one clock, across machines as close as NTP keeps them.
            now_perf, now_wall = time.perf_counter(), time.time()
            info["offset"] = (now_perf - (now_wall - info["wall"])) - info["perf"]
            self._infos[p] = info
        return self._infos[p]

    def nodes(self) -> list[str]:
        """The Ray node id each partition runs on, placing the partitions that are not yet."""
        return [self._info(p)["node"] for p in range(self.partitions)]

    def _restart(self, parts: Iterable[int]) -> None:
        ray = _ray()
        for p in parts:
            if self._workers[p] is not None:
                try:
                    ray.kill(self._workers[p], no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            self._workers[p] = None

    def close(self) -> None:
        """Kill every partition's Ray actor and wait until each is gone (at most KILL_WAIT seconds
        each); the executor cannot be used afterwards."""
        if self._closed:
            return
        workers = [w for w in self._workers if w is not None]
        self._restart(range(self.partitions))
        self._closed = True
        ray = _ray()
        for worker in workers:  # ray.kill is asynchronous: a call made just after it may still run
            deadline = time.perf_counter() + KILL_WAIT
            while time.perf_counter() < deadline:
                try:
                    ray.get(worker.info.remote(), timeout=KILL_WAIT)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
                time.sleep(0.02)

    # -- plans ---------------------------------------------------------------------------
    def _call(self, fetch: list[Node], reverse: ReversePlan | None, feeds: Feeds,
              timeout: float | None = None) -> _Call:
        key = (tuple(n.id for n in fetch), None if reverse is None else (reverse.output.id,
                                                                          tuple(w.id for w in reverse.wrt)))
        call = self._calls.get(key)
        if call is not None:
            return call
        targets = list(dict.fromkeys(([reverse.output] if reverse is not None else []) + list(fetch)))
        # Measured for the cut (and the stream's chunks, and describe); a placement is taken as given,
        # and the graph is then not run in this process at all.
        costs = self._measure(targets, feeds, timeout) if self.placement is None else {}
        ops_needed = [n for n in ancestors(targets) if n.kind == "op"]
        if not ops_needed:
            raise GraphError("nothing to compute: every fetched vertex is an input, a param or a constant")
        parts = min(self.partitions, len(ops_needed)) if self.placement is None else self.partitions
        partitioning = cutting.partition(targets, parts, costs, self.placement)
        call = _Call(next(self._keys), targets, partitioning, costs, reverse, fetch)
        self._programs(call)
        self._calls[key] = call
        return call

    def _measure(self, targets: list[Node], feeds: Feeds, timeout: float | None) -> dict[int, float]:
        """Each vertex's median time over 3 traced runs on the tape (the partitioner's costs), within
        the call's timeout."""
        from ..trace.tracer import Tracer

        tracer = Tracer()
        deadline = None if timeout is None else time.perf_counter() + timeout
        with SequentialExecutor(self.graph, tracer=tracer) as tape:
            for _ in range(3):
                left = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
                try:
                    tape.run(feeds, targets, timeout=left)
                except ExecutionTimeout as exc:
                    raise ExecutionTimeout(f"measuring the vertices for the partitioning did not finish within "
                                           f"{timeout} s ({exc})", waiting=exc.waiting) from None
        times: dict[str, list[float]] = collections.defaultdict(list)
        for span in tracer.spans:
            times[span.vertex].append(span.duration)
        by_name = {n.name: n.id for n in ancestors(targets)}
        return {by_name[name]: float(np.median(ts)) for name, ts in times.items() if name in by_name}

    def _programs(self, call: _Call) -> None:
        """What each partition runs: its sub-graph's recipe, fetches, sends and backward part."""
        cut, reverse = call.partitioning, call.reverse
        k = cut.count
        of = cut.of
        part_of = dict(of)

        def where(node: Node) -> int:
            return part_of[node.id] if node.kind == "op" else cut.home[node.id]

        call.readers_of = [sorted({q for n in members for q in cut.readers.get(n.id, [])}) for members in cut.parts]
        call.senders_to = [[p for p in range(k) if q in call.readers_of[p]] for q in range(k)]
        call.fetched_in = {n.id: of[n.id] for n in call.fetch if n.kind == "op"}
        keep_of: list[set[str]] = [set() for _ in range(k)]
        order_of: list[list[str]] = [[] for _ in range(k)]
        incoming_of: list[dict[str, tuple]] = [dict() for _ in range(k)]
        outgoing_of: list[dict[str, tuple]] = [dict() for _ in range(k)]
        needs_of: list[dict[str, tuple]] = [dict() for _ in range(k)]
        back: list[dict[int, list[int]]] = [collections.defaultdict(list) for _ in range(k)]
        if reverse is not None:
            for node in reverse.order:
                p = where(node)
                order_of[p].append(node.name)
                incoming_of[p][node.name] = reverse.incoming[node.id]
                if node.kind == "op":
                    outgoing_of[p][node.name] = reverse.outgoing[node.id]
                    needs_of[p][node.name] = reverse.needs[node.id]
                    keep_of[p].add(node.name)
                    keep_of[p].update(i.name for i in node.inputs if i.kind == "op" and of[i.id] == p)
            for edge, (consumer, pos) in enumerate(reverse.senders):
                if consumer is None:
                    continue
                sender, receiver = of[consumer.id], where(consumer.inputs[pos])
                if sender != receiver:
                    back[sender][receiver].append(edge)
            call.wrt_home = {w.id: where(w) for w in reverse.wrt if w.id in {n.id for n in reverse.order}}
        call.back_to = [sorted(back[p]) for p in range(k)]
        call.back_from = [[p for p in range(k) if q in call.back_to[p]] for q in range(k)]
        call.inputs_of = []
        call.programs = []
        readers_of_input: collections.Counter = collections.Counter()
        for p, members in enumerate(cut.parts):
            # Wave 0: what needs nothing from another partition (it starts at once, beside the
            # partitions it would otherwise wait for); wave 1: the rest, once their values arrive.
            early: set[int] = set()
            for n in members:
                if all(i.kind != "op" or i.id in early for i in n.inputs):
                    early.add(n.id)
            waves, inputs, fed = [], [], set()
            for wave in ([n for n in members if n.id in early], [n for n in members if n.id not in early]):
                entries, seen = [], set()
                for n in wave:
                    for i in n.inputs:
                        if i.id in seen:
                            continue
                        seen.add(i.id)
                        if i.kind in ("op", "input"):
                            entries.append(("input", i.name, i.shape, i.dtype.str))
                            if i.kind == "input" and i.id not in fed:
                                fed.add(i.id)
                                inputs.append(i)
                        elif i.kind == "param":
                            entries.append(("param", i.name, np.array(i.value)))
                        else:
                            entries.append(("const", i.name, np.array(i.value)))
                    entries.append(("op", n.name, n.op, [i.name for i in n.inputs], n.origin))
                    seen.add(n.id)
                waves.append(Recipe(self.graph.name, entries))
            call.inputs_of.append(inputs)
            readers_of_input.update(i.id for i in inputs)
            sends = [(q, [n.name for n in members if q in cut.readers.get(n.id, [])]) for q in call.readers_of[p]]
            fetch = [n.name for n in call.fetch if n.kind == "op" and of[n.id] == p]
            if reverse is not None and reverse.output.kind == "op" and of[reverse.output.id] == p:
                fetch = [reverse.output.name] + [f for f in fetch if f != reverse.output.name]
            program = Program(waves, fetch, sends, sorted(keep_of[p]),
                              order_of[p], incoming_of[p], outgoing_of[p], needs_of[p],
                              [w.name for w in (reverse.wrt if reverse is not None else ()) if w.id in call.wrt_home
                               and call.wrt_home[w.id] == p],
                              reverse.output.name if reverse is not None and where(reverse.output) == p else None,
                              [(q, back[p][q]) for q in call.back_to[p]])
            call.programs.append(program)
            call.params_of.append(list({name: self.graph[name] for kind, name, *_ in program.entries()
                                        if kind == "param"}.values()))
        call.shared_inputs = {i for i, readers in readers_of_input.items() if readers > 1}

    def _ready(self, call: _Call, timeout: float | None = None) -> None:
        """Every partition has this call's program and the current value of each param it reads.

        Placing a partition waits at most `timeout` (else PLACE_TIMEOUT seconds): a cluster without
        the resources asked for would otherwise keep it pending for ever.
        """
        ray = _ray()
        pending = []
        for p, program in enumerate(call.programs):
            worker = self._worker(p)
            params = call.params_of[p]
            if call.key not in self._prepared[p]:
                pending.append(worker.prepare.remote(call.key, program))
                self._prepared[p].add(call.key)
                for node in params:
                    self._sent_params[p][node.id] = id(node.value)
            sent = self._sent_params[p]
            changed = {node.name: node.value for node in params if sent.get(node.id) != id(node.value)}
            if changed:
                for node in params:
                    sent[node.id] = id(node.value)
                pending.append(worker.set_params.remote({k: ray.put(v) for k, v in changed.items()}))
        if pending:
            self._get(pending, PLACE_TIMEOUT if timeout is None else timeout, call,
                      f"placing the partitions ({self.num_cpus:g} CPU, {self.num_gpus:g} GPU each)")
            for p in range(self.partitions):  # where each one lives, known before it can be lost
                self._info(p)

    # -- steps ---------------------------------------------------------------------------
    def _submit_forward(self, call: _Call, feeds: dict[int, Any], step: int, keep: bool, trace: bool) -> list:
        """Submit every partition's forward call; [(driver ref, {reader: ref})] per partition."""
        return self._submit(call, [feeds], [step], keep, trace, chunk=False)

    def _submit(self, call: _Call, feeds: list[dict[int, Any]], steps: list[int], keep: bool, trace: bool,
                chunk: bool) -> list:
        """Every partition's call for these steps (one call for all of them with `chunk`).

        A feed read by one partition travels in its call (Ray inlines or stores it); one read by
        several goes into the object store once and each reads it there.
        """
        ray = _ray()
        shared = call.shared_inputs
        puts = [{i: ray.put(f[i]) for i in shared} for f in feeds]
        outs: list = []
        for p, program in enumerate(call.programs):
            sources = [{n.name: (put[n.id] if n.id in shared else f[n.id]) for n in call.inputs_of[p]}
                       for f, put in zip(feeds, puts)]
            incoming = [outs[q][1][p] for q in call.senders_to[p]]
            worker = self._worker(p)
            returns = 1 + len(program.sends)
            if chunk:
                refs = worker.forward_chunk.options(num_returns=returns).remote(call.key, steps, sources, incoming,
                                                                                trace)
            else:
                refs = worker.forward.options(num_returns=returns).remote(call.key, steps[0], sources[0], incoming,
                                                                          keep, trace)
            refs = refs if isinstance(refs, list) else [refs]
            outs.append((refs[0], {q: r for (q, _), r in zip(program.sends, refs[1:])}))
        return outs

    def _get(self, refs, timeout: float | None, call: _Call | None, what: str):
        """ray.get with vertexflow's errors: the failing vertex named with its partition, a lost
        partition placed again, a timeout that restarts the partitions still busy."""
        ray = _ray()
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            waiting = self._running(refs)
            self._restart(range(self.partitions))
            shown = "; ".join(f"{name} waits for {why}" for name, why in list(waiting.items())[:10])
            raise ExecutionTimeout(f"{what} did not finish within {timeout} s ({shown or 'no partition answered'}); "
                                   "the partitions were stopped and will be placed again at the next call",
                                   waiting=waiting) from None
        except ray.exceptions.RayActorError as exc:
            _settle(refs)
            raise self._lost(what) from exc
        except ray.exceptions.RayTaskError as exc:
            _settle(refs)
            cause = _root_cause(exc)
            p = getattr(cause, "partition", None)  # set by the partition where it was raised
            if isinstance(cause, ray.exceptions.RayActorError):
                raise self._lost(what) from cause
            where = self._where(p)
            if isinstance(cause, VertexError):
                raise VertexError(f"{cause} [in partition {where}]", vertex=cause.vertex, op=cause.op,
                                  input_shapes=cause.input_shapes) from cause
            if isinstance(cause, VertexflowError):
                raise type(cause)(f"{cause} [in partition {where}]") from cause
            raise VertexError(f"partition {where} failed: {type(cause).__name__}: {cause}", vertex="?",
                              op="?") from cause

    def _running(self, refs) -> dict[str, str]:
        """{vertex: what it waits for} in the partitions whose results have not come: asked on each one's
        status thread (its compute thread cannot answer), a second at most."""
        ray = _ray()
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        done = set(done)
        waiting: dict[str, str] = {}
        for p, worker in enumerate(self._workers):
            if worker is None or (p < len(refs) and refs[p] in done):
                continue
            try:
                found = ray.get(worker.where.options(concurrency_group="status").remote(), timeout=1.0)
            except Exception:  # noqa: BLE001 - a partition that cannot answer is named as such
                found = {}
            for name, why in (found or {"(partition)": "its partition's process to answer"}).items():
                waiting.setdefault(name, f"{why} (partition {self._where(p)})")
        return waiting

    def _lost(self, what: str) -> PartitionLost:
        lost = self._dead()
        named = ", ".join(self._where(p) for p in lost) or "?"
        nodes = tuple(dict.fromkeys((self._infos[p] or {}).get("node", "?") for p in lost))
        alive = {n["NodeID"] for n in _ray().nodes() if n.get("Alive")}
        gone = [n for n in nodes if n != "?" and n not in alive]
        why = f"; its node {', '.join(n[:8] for n in gone)} left the cluster" if gone else ""
        self._restart(lost)
        return PartitionLost(f"partition {named} of {self.partitions} died while running {what}{why}; it will be "
                             "placed again at the next call", partitions=lost, nodes=nodes)

    def _where(self, p: int | None) -> str:
        if p is None:
            return "?"
        info = self._infos[p]
        if info is None and self._workers[p] is not None:
            try:
                info = self._info(p)
            except Exception:  # noqa: BLE001 - a partition that is gone has no pid to show
                info = None
        info = info or {}
        return f"{p} (pid {info.get('pid', '?')} on node {info.get('node', '?')[:8]} at {info.get('ip', '?')})"

    def _dead(self) -> list[int]:
        ray = _ray()
        dead = []
        for p, worker in enumerate(self._workers):
            if worker is None:
                continue
            try:
                ray.get(worker.info.remote(), timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(p)
        return dead

    def _checked(self, feeds: Feeds, call: _Call) -> dict[int, Any]:
        if call.needed_inputs is None:
            call.needed_inputs = [n for n in ancestors(call.targets) if n.kind == "input"]
        checked = self._feeds(feeds, call.needed_inputs)
        return {k: np.asarray(v) for k, v in checked.items()}

    def _merge_trace(self, payloads: list[tuple[int, dict]], call: _Call, tracer, step: int, run: int) -> None:
        for p, payload in payloads:
            if payload is None:
                continue
            info = self._info(p)
            tracer.merge_remote(payload["spans"], payload["events"], payload["transfers"],
                                label=f"RayExecutor partition {p} (pid {info['pid']} on {info['ip']})",
                                offset=info["offset"], run=run, step=step, key=(id(self), p, info["pid"]),
                                steps=payload.get("steps") or None, waits=payload.get("waits", ()),
                                producer_waits=payload.get("producer_waits", ()),
                                slices=payload.get("slices", ()), counters=payload.get("counters", ()),
                                step_of=payload.get("step_of"))

    def _source_value(self, node: Node, feeds: dict[int, Any]):
        return np.array(feeds[node.id]) if node.kind == "input" else np.array(node.value)

    # -- the interface -------------------------------------------------------------------
    def run(self, feeds: Feeds, fetch: Fetch | Sequence[Fetch], *, timeout: float | None = None):
        nodes, single = self._fetches(fetch)
        if all(n.kind != "op" for n in nodes):  # inputs, params, constants: copies, no partition involved
            if self._closed:
                raise ExecutorClosed("this RayExecutor was closed; make a new one")
            checked = self._feeds(feeds, [n for n in nodes if n.kind == "input"])
            values = [self._source_value(n, checked) for n in nodes]
            return values[0] if single else values
        call = self._call(nodes, None, feeds, timeout)
        checked = self._checked(feeds, call)
        self._ready(call, timeout)
        tracer = self._tracer()
        step = next(self._steps)
        outs = self._submit_forward(call, checked, step, keep=False, trace=tracer is not None)
        results = self._get([o[0] for o in outs], timeout, call, "the step")
        if tracer is not None:
            self._merge_trace([(p, r["trace"]) for p, r in enumerate(results)], call, tracer, step, tracer.new_run())
        return self._collect(nodes, single, call, results, checked)

    def _collect(self, nodes, single, call, results, checked):
        got = {}
        for r in results:
            got.update(r["values"])
        values = [got[n.name] if n.kind == "op" else self._source_value(n, checked) for n in nodes]
        return values[0] if single else values

    def backward(self, feeds: Feeds, loss: Fetch, wrt=None, *, fetch=None, timeout: float | None = None):
        (loss_node,), _ = self._fetches([loss])
        extra, single = self._fetches(fetch) if fetch is not None else ([], False)
        plan = self._plan(loss_node, wrt)
        call = self._call(extra, plan, feeds, timeout)
        checked = self._checked(feeds, call)
        self._ready(call, timeout)
        tracer = self._tracer()
        trace = tracer is not None
        step = next(self._steps)
        outs = self._submit_forward(call, checked, step, keep=True, trace=trace)
        backs: list = [None] * call.partitioning.count
        for p in reversed(range(call.partitioning.count)):
            program = call.programs[p]
            incoming = [backs[q][1][p] for q in call.back_from[p]]
            refs = self._worker(p).backward.options(num_returns=1 + len(program.sends_back)).remote(
                call.key, step, incoming, trace)
            refs = refs if isinstance(refs, list) else [refs]
            backs[p] = (refs[0], {q: r for (q, _), r in zip(program.sends_back, refs[1:])})
        try:
            forward = self._get([o[0] for o in outs], timeout, call, "the forward pass")
            deadline = None if timeout is None else timeout
            backward = self._get([b[0] for b in backs], deadline, call, "the backward pass")
        except VertexflowError:
            for w in self._workers:
                if w is not None:
                    w.drop.remote(step)
            raise
        if trace:
            run = tracer.new_run()
            self._merge_trace([(p, r["trace"]) for p, r in enumerate(forward)], call, tracer, step, run)
            self._merge_trace([(p, r["trace"]) for p, r in enumerate(backward)], call, tracer, step, run)
        values = {}
        for r in forward:
            values.update(r["values"])
        loss_value = values[loss_node.name] if loss_node.kind == "op" else self._source_value(loss_node, checked)
        totals = {}
        by_name = {w.name: w.id for w in plan.wrt}
        for r in backward:
            for name, g in r["grads"].items():
                totals[by_name[name]] = g
        grads = gradient_result(plan, totals, np.asarray, feeds)
        if fetch is None:
            return loss_value, grads
        return loss_value, grads, self._collect(extra, single, call, forward, checked)

    def run_stream(self, feeds_iterable: Iterable[Feeds], fetch: Fetch | Sequence[Fetch], *,
                   depth: int | None = None, chunk: int | None = None, timeout: float | None = None) -> Iterator:
        """Results for each feed dict, in input order, pipelined through the partitions.

        Args:
            depth: calls in flight per partition (default 2 per partition): a partition computes a
                later call while the next partition computes an earlier one.
            chunk: steps per call (default: about 40 ms of the busiest partition's measured work, 1
                to 64 steps, and at most a quarter of a stream of known length; 1 with a placement,
                which is not measured), so a Ray call (milliseconds of CPU) is paid once per chunk. A
                param changed during the stream is in force from the next chunk submitted.
            timeout: seconds each chunk may take.
        """
        nodes, single = self._fetches(fetch)
        depth = self.depth if depth is None else int(depth)
        if depth < 1:
            raise GraphError(f"depth must be >= 1, got {depth}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise GraphError(f"chunk must be an int >= 1, got {chunk!r}")
        ray = _ray()
        tracer = self._tracer()
        run = tracer.new_run() if tracer is not None else 0
        in_flight: collections.deque = collections.deque()
        call, size = None, chunk
        known = len(feeds_iterable) if isinstance(feeds_iterable, Sized) else None
        iterator = iter(feeds_iterable)
        exhausted = False
        try:
            while True:
                while len(in_flight) < depth and not exhausted:
                    group = []
                    while size is None or len(group) < size:
                        try:
                            feeds = next(iterator)
                        except StopIteration:
                            exhausted = True
                            break
                        if call is None:
                            call = self._call(nodes, None, feeds, timeout)
                            self._ready(call, timeout)
                            size = self._chunk(call, known) if chunk is None else chunk
                        group.append(self._checked(feeds, call))
                    if not group:
                        break
                    self._ready(call, timeout)
                    steps = [next(self._steps) for _ in group]
                    outs = self._submit(call, group, steps, False, tracer is not None, chunk=True)
                    in_flight.append((steps, group, [o[0] for o in outs]))
                if not in_flight:
                    return
                steps, group, refs = in_flight.popleft()
                results = self._get(refs, timeout, call, f"stream steps {steps[0]}-{steps[-1]}")
                if tracer is not None:
                    self._merge_trace([(p, r["trace"]) for p, r in enumerate(results)], call, tracer, steps[0], run)
                for k, checked in enumerate(group):
                    yield self._collect(nodes, single, call, [{"values": r["values"][k]} for r in results], checked)
        finally:
            if in_flight:  # a stream closed early: its calls still queued need not run
                for _, _, refs in in_flight:
                    for ref in refs:
                        ray.cancel(ref, force=False)
                    _settle(refs, wait=0)

    def _chunk(self, call: _Call, steps: int | None = None) -> int:
        """Steps per stream call: about CHUNK_WORK seconds of the busiest partition's measured work (1 to
        64 steps), and for a stream of known length at most a quarter of it, so the pipeline fills.

        A Ray call costs milliseconds of CPU here (the driver's, the raylet's and the partition's: about
        3.5 ms a round trip on two cores, where the partitions compute too), so chunks must be large;
        but the first chunk's time on the first partition and the last one's on the last are not
        overlapped. On a 3000-vertex chain streamed over 120 steps, 20-30 steps a chunk were fastest
        (8 steps: 15% slower, 40: 18% slower).
        """
        if not call.costs:
            return 1
        busiest = max(sum(call.costs.get(n.id, 0.0) for n in members) for members in call.partitioning.parts)
        size = int(min(64, max(1, round(CHUNK_WORK / max(busiest, 1e-5)))))
        if steps is not None:
            size = min(size, max(1, steps // 4))
        return size

    def describe(self, fetch: Fetch | Sequence[Fetch], feeds: Feeds = None, *, loss: Fetch | None = None) -> str:
        """Which vertices live in which partition, the measured time of each, and the cut edges
        with their bytes per step (sizes from `feeds` where the graph leaves them open)."""
        nodes, _ = self._fetches(fetch)
        plan = self._plan(self.graph.resolve(loss), None) if loss is not None else None
        call = self._call(nodes, plan, feeds)
        specs = None
        if feeds is not None:
            from ..core import concrete_specs

            checked = self._checked(feeds, call)
            specs = concrete_specs(ancestors(call.targets), checked)
        lines = [f"RayExecutor: {call.partitioning.count} partitions, each running {self.kind!r} on its sub-graph "
                 f"({self.num_cpus:g} CPU each)"]
        self._ready(call)  # the partitions are placed, so their processes can be named
        for p in range(call.partitioning.count):
            info = self._info(p)
            lines.append(f"  partition {p}: Ray actor pid {info['pid']} on node {info['node'][:8]} at {info['ip']}")
        lines.append(cutting.describe(call.partitioning, specs, call.costs))
        return "\n".join(lines)

    def trace_options(self) -> dict:
        return {"partitions": self.partitions, "executor": self.kind}


def _settle(refs, wait: float = 2.0) -> None:
    """Collect the outcomes of calls whose results are no longer wanted (after a failure, or a stream
    closed early), so Ray does not print each of their errors as unhandled when they are dropped."""
    ray = _ray()
    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=wait)
    for ref in done:
        try:
            ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - the error this call raised is already reported, or not wanted
            pass


def _root_cause(exc):
    """The original exception inside Ray's wrappers (an upstream partition's, when it passed through)."""
    import ray

    seen = 0
    while isinstance(exc, ray.exceptions.RayTaskError) and seen < 20:
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc:
            break
        exc = cause
        seen += 1
    return exc

