"""Export spans as Chrome Trace Event Format JSON, which Perfetto UI and chrome://tracing open.

One complete event ("ph": "X", microseconds) per span, one `tid` per lane
named by `thread_name` metadata, and a flow (an "s" and an "f" event sharing
an id) along each data edge from the producer's span to the consumer's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracer import Tracer

PID = 1


def chrome_events(tracer: Tracer) -> list[dict]:
    spans = sorted(tracer.spans, key=lambda s: (s.start, s.end))
    lanes = tracer.lanes()
    tid = {lane: i + 1 for i, lane in enumerate(lanes)}
    origin = min((min(s.ready, s.start) for s in spans), default=tracer.origin)

    def us(t: float) -> float:
        return round((t - origin) * 1e6, 3)

    events: list[dict] = [
        {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": "vertexflow"}},
    ]
    for lane in lanes:
        events.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": tid[lane], "args": {"name": lane}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": tid[lane], "args": {"sort_index": tid[lane]}})
    producer = {}
    for s in spans:
        events.append(
            {
                "ph": "X",
                "name": s.vertex,
                "cat": s.phase,
                "ts": us(s.start),
                "dur": max(round((s.end - s.start) * 1e6, 3), 0.0),
                "pid": PID,
                "tid": tid[s.lane],
                "args": {
                    "vertex": s.vertex,
                    "op": s.op,
                    "phase": s.phase,
                    "step": s.step,
                    "lane": s.lane,
                    "input_shapes": [list(shape) for shape in s.input_shapes],
                    "inputs": list(s.inputs),
                    "wait_us": round(s.wait * 1e6, 3),
                },
            }
        )
        if s.phase == "forward":
            producer[(s.step, s.vertex)] = s
    flow_id = 0
    for s in spans:
        if s.phase != "forward":
            continue
        for name in dict.fromkeys(s.inputs):
            p = producer.get((s.step, name))
            if p is None:
                continue
            flow_id += 1
            events.append({"ph": "s", "id": flow_id, "name": "value", "cat": "edge", "ts": us(p.start),
                           "pid": PID, "tid": tid[p.lane]})
            events.append({"ph": "f", "bp": "e", "id": flow_id, "name": "value", "cat": "edge",
                           "ts": us(max(s.start, p.start)), "pid": PID, "tid": tid[s.lane]})
    return events


def write_chrome_trace(tracer: Tracer, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"traceEvents": chrome_events(tracer), "displayTimeUnit": "ms"}, f)
