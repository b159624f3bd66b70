"""Traces as Chrome Trace Event Format JSON, which Perfetto UI and chrome://tracing open (and read back).

Each executor is a process of its own ("ActorExecutor threads=2 ... (#1)"),
each of its lanes a thread with an id unique in the file and never equal to
a pid. One complete event ("ph": "X", microseconds since the tracer began)
per span, named by its vertex (backward spans "vertex (backward)", so
per-name statistics never mix the phases), its phase as its category, with
the op, step, run, output dtype, shape, bytes, estimated flops, fused group,
input shapes, CPU time and wait in its args. Waits that block a thread (the BLAS lock) are complete
events of their own on that thread, just before the work; waits that block
no thread (a task queued for a worker, an actor waiting in its inbox) are
async slices, as are the steps of a run. Counters are "C" events. Flows join
spans of one step of one run on different lanes (on one thread the order
already says it): each data edge from the producer's end to the consumer's
start, each gradient edge backward, and each vertex's forward to its backward. `otherData` holds the clock base and the executors'
options, so the trace lines up with PyTorch's or viztracer's.
"""

from __future__ import annotations

import contextlib
import gc
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:
    from .tracer import Tracer

PHASES = ("forward", "backward")


@contextlib.contextmanager
def no_gc_pauses():
    """A block that makes or reads millions of small objects without the cyclic collector running over
    them again and again (it tripled the time to read a trace of 100,000 spans); they hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _microseconds(values, origin: float = 0.0) -> list[float]:
    """(values - origin) in microseconds, rounded to nanoseconds: one numpy pass, not a round() each."""
    return np.round((np.asarray(values, dtype=np.float64) - origin) * 1e6, 3).tolist()


def chrome_events(tracer: Tracer) -> list[dict]:
    spans = sorted(tracer.spans, key=lambda s: (s.track, s.start, s.end))
    origin = tracer.origin

    def us(t: float) -> float:
        return round((t - origin) * 1e6, 3)

    events: list[dict] = []
    tracks = sorted({s.track for s in spans} | {e.track for e in tracer.events} | {c.track for c in tracer.counters})
    tid_of: dict[tuple[int, str], int] = {}
    for track in tracks:
        pid = max(track, 0) + 1  # track 0 (spans recorded by hand) is pid 1; executors 2, 3, ...
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": tracer.track_label(track) if track else "vertexflow"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        if track in tracer.tracks:
            events.append({"ph": "M", "name": "process_labels", "pid": pid, "tid": 0,
                           "args": {"labels": ", ".join(f"{k}={v}" for k, v in tracer.tracks[track].options.items())}})
        for k, lane in enumerate(tracer.lanes(track, everything=True)):
            tid = pid * 1000 + k + 1
            tid_of[(track, lane)] = tid
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": lane}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": k}})

    def pid(track: int) -> int:
        return max(track, 0) + 1

    # A vertex's spans repeat from step to step: what does not change is built once, and copied.
    fixed: dict[tuple, tuple[dict, str]] = {}
    starts = _microseconds([s.start for s in spans], origin)
    durations = _microseconds([max(s.end - s.start, 0.0) for s in spans])
    waited_us = _microseconds([max(s.start - s.ready, 0.0) for s in spans])
    cpu_us = _microseconds([0.0 if s.cpu is None else s.cpu for s in spans])
    for k, s in enumerate(spans):
        key = (s.vertex, s.op, s.phase, s.lane, s.input_shapes, s.inputs, s.shape, s.dtype, s.flops, s.fused)
        base = fixed.get(key)
        if base is None:  # (the vertex, phase and lane are the event's name, cat and thread)
            base = {"op": s.op, "input_shapes": [list(x) for x in s.input_shapes], "inputs": list(s.inputs)}
            if s.dtype:
                base.update(dtype=s.dtype, shape=list(s.shape), bytes=s.bytes)
            if s.flops is not None:
                base["estimated_flops"] = s.flops
            if s.fused:
                base["fused"] = s.fused
            base = fixed[key] = (base, s.name)
        args = {**base[0], "step": s.step, "run": s.run, "wait_us": waited_us[k]}
        if s.cpu is not None:
            args["cpu_us"] = cpu_us[k]
        events.append({"ph": "X", "name": base[1], "cat": s.phase, "ts": starts[k], "dur": durations[k],
                       "pid": s.track + 1 if s.track > 0 else 1, "tid": tid_of[(s.track, s.lane)], "args": args})
    async_id = 0
    for w in tracer.waits:
        if w.lane is not None and (w.track, w.lane) in tid_of:
            events.append({"ph": "X", "name": f"wait: {w.what}", "cat": "wait", "ts": us(w.start),
                           "dur": max(round((w.end - w.start) * 1e6, 3), 0.0), "pid": pid(w.track),
                           "tid": tid_of[(w.track, w.lane)],
                           "args": {"vertex": w.vertex, "step": w.step, "run": w.run}})
            continue
        async_id += 1
        common = {"cat": "wait", "name": f"waits for {'a ' if w.what == 'worker' else 'its '}{w.what}",
                  "id": async_id, "pid": pid(w.track), "tid": 0}
        events.append({"ph": "b", "ts": us(w.start), "args": {"vertex": w.vertex, "step": w.step, "run": w.run},
                       **common})
        events.append({"ph": "e", "ts": us(w.end), **common})
    for e in tracer.events:
        events.append({"ph": "X", "name": e.name, "cat": "executor", "ts": us(e.start),
                       "dur": max(round((e.end - e.start) * 1e6, 3), 0.0), "pid": pid(e.track),
                       "tid": tid_of.get((e.track, e.lane), pid(e.track) * 1000), "args": dict(e.args)})
    for c in tracer.counters:
        # Perfetto names a counter track "<name> <arg key>": "workers busy", "steps in flight".
        events.append({"ph": "C", "name": c.group, "ts": us(c.time), "pid": pid(c.track), "tid": 0,
                       "args": {c.series: c.value}})
    for sl in tracer.slices:
        async_id += 1
        common = {"cat": "step", "name": f"step {sl.step} (run {sl.run})", "id": async_id, "pid": pid(sl.track),
                  "tid": 0}
        events.append({"ph": "b", "ts": us(sl.start), **common})
        events.append({"ph": "e", "ts": us(sl.end), **common})
    events += _flows(spans, tid_of, origin, pid)
    return events


def _flows(spans, tid_of, origin: float, pid) -> list[dict]:
    """Flow events along each edge of one step of one run: values forward, gradients backward."""
    by_key = {}
    anywhere = {}  # (run, step, vertex, phase) -> span on any track: a value from another process
    for s in spans:
        by_key[(s.track, s.run, s.step, s.vertex, s.phase)] = s
        anywhere.setdefault((s.run, s.step, s.vertex, s.phase), s)
    links: list[tuple] = []  # (from span, to span, name)

    def link(a, b, name: str) -> None:
        # Between lanes only (on one thread the order already says it), and never backwards in time
        # (spans recorded by hand may not be causal).
        if b.start >= a.end and (a.lane != b.lane or a.track != b.track):
            links.append((a, b, name))

    inputs_of: dict[tuple[int, int, int, str], tuple[str, ...]] = {}
    for s in spans:
        if s.phase == "forward":
            inputs_of[(s.track, s.run, s.step, s.vertex)] = s.inputs
    for s in spans:
        key = (s.track, s.run, s.step)
        if s.phase == "forward":
            for name in dict.fromkeys(s.inputs):
                producer = by_key.get((*key, name, "forward"))
                if producer is None:  # made in another partition's process: one run of the driver's
                    producer = anywhere.get((s.run, s.step, name, "forward"))
                    if producer is not None and producer.track == s.track:
                        producer = None
                if producer is not None:
                    link(producer, s, "value")
        else:
            forward = by_key.get((*key, s.vertex, "forward"))
            if forward is not None:
                link(forward, s, "to backward")
            for name in dict.fromkeys(inputs_of.get((*key, s.vertex), ())):
                producer = by_key.get((*key, name, "backward"))
                if producer is not None:
                    link(s, producer, "gradient")
    if not links:
        return []
    # A flow leaves just before its producer's end and lands just after its consumer's start (half a
    # microsecond, or half the span when shorter), so both ends sit inside their slices.
    a_end = np.array([a.end for a, _, _ in links])
    a_len = np.array([a.end - a.start for a, _, _ in links])
    b_start = np.array([b.start for _, b, _ in links])
    b_len = np.array([b.end - b.start for _, b, _ in links])
    leave = np.round((a_end - origin) * 1e6 - np.minimum(0.5, a_len * 1e6 / 2), 3).tolist()
    land = np.round((b_start - origin) * 1e6 + np.minimum(0.5, b_len * 1e6 / 2), 3).tolist()
    out: list[dict] = []
    for k, (a, b, name) in enumerate(links):
        out.append({"ph": "s", "id": k + 1, "name": name, "cat": "edge", "ts": leave[k], "pid": pid(a.track),
                    "tid": tid_of[(a.track, a.lane)]})
        out.append({"ph": "f", "bp": "e", "id": k + 1, "name": name, "cat": "edge", "ts": land[k],
                    "pid": pid(b.track), "tid": tid_of[(b.track, b.lane)]})
    return out


def write_chrome_trace(tracer: Tracer, path: str) -> None:
    with no_gc_pauses():
        _write(tracer, path)


def _write(tracer: Tracer, path: str) -> None:
    doc = {
        "traceEvents": chrome_events(tracer),
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": "vertexflow",
            "clock": "time.perf_counter, microseconds since otherData.perf_counter_origin_s",
            "perf_counter_origin_s": tracer.origin,
            "unix_time_origin_s": tracer.wall_origin,
            "machine": tracer.metadata,
            "executors": {t.label: t.options for t in tracer.tracks.values()},
        },
    }
    with open(path, "wb") as f:
        f.write(dumps(doc))


def dumps(doc) -> bytes:
    """JSON bytes, with orjson (numpy scalars and arrays as numbers; anything else by its str)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=_plain)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def read_chrome_trace(path: str) -> Tracer:
    """A Tracer from a file `write_chrome_trace` wrote: its spans, tracks, waits, events and counters.

    Raises:
        ValueError: the file is not a vertexflow Chrome trace.
    """
    with no_gc_pauses():
        return _read(path)


def _read(path: str) -> Tracer:
    from .tracer import Counter, Event, Span, Tracer, Track, Wait

    with open(path, "rb") as f:
        try:
            doc = orjson.loads(f.read())
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or "traceEvents" not in doc:
        raise ValueError(f"{path}: not a Chrome trace (no traceEvents)")
    other = doc.get("otherData", {})
    tracer = Tracer()
    tracer.origin = float(other.get("perf_counter_origin_s", 0.0))
    tracer.wall_origin = float(other.get("unix_time_origin_s", tracer.wall_origin))
    tracer.metadata = other.get("machine", tracer.metadata)

    def sec(ts: float) -> float:
        return tracer.origin + ts / 1e6

    lanes: dict[tuple[int, int], str] = {}
    track_of_pid: dict[int, int] = {}
    for e in doc["traceEvents"]:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            track = e["pid"] - 1
            track_of_pid[e["pid"]] = track
            if track:
                label = e["args"]["name"]
                options = other.get("executors", {}).get(label, {})
                tracer.tracks[track] = Track(track, label, options)
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            lanes[(e["pid"], e["tid"])] = e["args"]["name"]
    open_async: dict[tuple, dict] = {}
    repeated: dict[tuple, tuple] = {}
    for e in doc["traceEvents"]:
        ph = e.get("ph")
        track = track_of_pid.get(e.get("pid"), 0)
        if ph == "X" and e.get("cat") in PHASES:
            a = e["args"]
            start, end = sec(e["ts"]), sec(e["ts"] + e["dur"])
            ready = start - a.get("wait_us", 0.0) / 1e6
            # what repeats from step to step (shapes, input names) made into tuples once
            shapes = a.get("input_shapes", ())
            phase = e["cat"]
            key = (e["name"], phase, e["pid"], e["tid"], repr(shapes), repr(a.get("shape")))
            fixed = repeated.get(key)
            if fixed is None:
                vertex = e["name"].removesuffix(" (backward)") if phase == "backward" else e["name"]
                fixed = repeated[key] = (tuple(tuple(x) for x in shapes), tuple(a.get("inputs", ())),
                                         tuple(a.get("shape", ())), a.get("vertex", vertex),
                                         a.get("lane", lanes.get((e["pid"], e["tid"]), "?")))
            tracer._spans.append(Span(
                fixed[3], a["op"], phase, a["step"], fixed[4], ready, start, end, fixed[0], fixed[1], start,
                None if "cpu_us" not in a else a["cpu_us"] / 1e6, a.get("run", 0), track, fixed[2],
                a.get("dtype", ""), a.get("estimated_flops"), a.get("fused")))
        elif ph == "X" and e.get("cat") == "wait":
            a = e.get("args", {})
            tracer.waits.append(Wait(e["name"].removeprefix("wait: "), a.get("vertex", ""), track, a.get("run", 0),
                                     a.get("step", 0), lanes.get((e["pid"], e["tid"])), sec(e["ts"]),
                                     sec(e["ts"] + e["dur"])))
        elif ph == "X" and e.get("cat") == "executor":
            tracer.events.append(Event(e["name"], track, lanes.get((e["pid"], e["tid"]), "?"), sec(e["ts"]),
                                       sec(e["ts"] + e["dur"]), dict(e.get("args", {}))))
        elif ph == "C":
            for series, value in e.get("args", {}).items():
                tracer.counters.append(Counter(e["name"], series, track, sec(e["ts"]), value))
        elif ph == "b" and e.get("cat") == "wait":
            open_async[(e["pid"], e["id"])] = e
        elif ph == "e" and e.get("cat") == "wait":
            begin = open_async.pop((e["pid"], e["id"]), None)
            if begin is not None:
                a = begin.get("args", {})
                what = begin["name"].removeprefix("waits for ").removeprefix("a ").removeprefix("its ")
                tracer.waits.append(Wait(what, a.get("vertex", ""), track, a.get("run", 0), a.get("step", 0), None,
                                         sec(begin["ts"]), sec(e["ts"])))
    tracer._spans.sort(key=lambda s: s.end)
    return tracer


def lane_table(events: list[dict]) -> dict[int, list[dict]]:
    """Complete events per (pid, tid), sorted: what the tests check nesting on."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            out[(e["pid"], e["tid"])].append(e)
    for v in out.values():
        v.sort(key=lambda e: (e["ts"], -e["dur"]))
    return out


def save(tracer: Tracer, path: str) -> str:
    """Write the trace as Chrome Trace Event Format JSON (Perfetto, chrome://tracing); returns the path."""
    write_chrome_trace(tracer, path)
    return path


def load(cls, path: str) -> Tracer:
    """A tracer back from a Chrome JSON file vertexflow wrote (to view or compare it again)."""
    return read_chrome_trace(path)
