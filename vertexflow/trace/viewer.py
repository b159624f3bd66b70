"""The trace viewer: one self-contained HTML file that needs nothing but a browser.

The page carries the trace as JSON inside a `<script type="application/json">`
element (with `<`, `>` and `&` escaped, so no name can close the element):
spans in columns (lane, vertex, op, phase, step, run, ready, start, end, CPU
time), names and shapes in tables, so 100,000 spans stay a few megabytes.
Inline JavaScript draws them on a canvas, one row per lane, grouped by
executor: each lane's spans sorted by start, so a redraw binary-searches the
visible ones and merges those thinner than a pixel, and a hover finds its
span by bisection; redraws are batched to one per animation frame.

What a user can do: zoom (wheel, W/S), pan (drag, A/D), search and filter
(`/`, by text or `vertex:`, `op:`, `step:`, `phase:`, `lane:`), select a time
range (shift-drag) for per-vertex and per-op count, total, mean, min, max and
p95, click a span for its producers, consumers, and its vertex's duration
histogram, Esc to clear; the critical path of each step is outlined; the
graph picture (chains collapsed when large) selects a vertex's spans when
clicked. With a comparison, the sequential and the concurrent run are drawn
aligned, with the breakdown of why the concurrent one was (not) faster.
Names reach the page only through `textContent` and canvas text, never as
HTML. A Content-Security-Policy of `default-src 'none'` forbids any request.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from .analysis import summarize
from .chrome import dumps, no_gc_pauses

if TYPE_CHECKING:
    from .compare import Comparison
    from .tracer import Tracer

GRAPH_LIMIT = 400  # vertices drawn one by one; above it chains are collapsed, then levels summarized
MAX_WAITS = 50_000  # waits shipped to the page
WAITS_LANE = "waits, no thread held"


def trace_data(tracer: Tracer, title: str = "vertexflow trace", compare: Comparison | None = None) -> dict:
    """Everything the page shows, as JSON-able data (times in microseconds)."""
    tracers = [tracer] if compare is None else [compare.sequential, compare.concurrent]
    names: dict[str, int] = {}
    ops: dict[str, int] = {}
    shapes: dict[str, int] = {}
    lanes: list[dict] = []
    lane_index: dict[tuple[int, int, str], int] = {}
    tracks = []
    cols = {k: [] for k in ("lane", "v", "op", "ph", "step", "run", "r", "s", "e", "cpu", "shp", "fused")}
    inputs: dict[int, list[int]] = {}
    critical: list[int] = []
    waits = []
    fused_names: dict[str, int] = {}

    def intern(table: dict, key: str) -> int:
        found = table.get(key)
        if found is None:
            found = table[key] = len(table)
        return found

    for t_index, tr in enumerate(tracers):
        spans = sorted(tr.spans, key=lambda s: (s.track, s.lane, s.start))
        track_ids = sorted({s.track for s in spans})
        for track in track_ids:
            own = [s for s in spans if s.track == track]
            offset = min(s.ready for s in own) if compare is not None else tr.origin
            summary = summarize(tr, track=track)
            label = tr.track_label(track)
            if compare is not None:
                label = ("sequential: " if t_index == 0 else "concurrent: ") + label
            tracks.append({"id": len(tracks), "label": label, "summary": summary.as_dict(),
                           "options": tr.tracks[track].options if track in tr.tracks else {}})
            key_track = len(tracks) - 1
            for lane in tr.lanes(track):
                lane_index[(t_index, track, lane)] = len(lanes)
                lanes.append({"track": key_track, "name": lane})
            on_path = {(run, step, v, ph) for (run, step), path in summary.critical_by_step.items()
                       for v, ph in path}
            first = len(cols["s"])
            for column, values in (("r", [s.ready for s in own]), ("s", [s.start for s in own]),
                                   ("e", [s.end for s in own])):
                cols[column] += np.round((np.asarray(values) - offset) * 1e6, 2).tolist()
            cols["cpu"] += np.round(np.asarray([-1e-6 if s.cpu is None else s.cpu for s in own]) * 1e6, 2).tolist()
            shape_text: dict[tuple, int] = {}
            for k, s in enumerate(own):
                i = first + k
                vertex = intern(names, s.vertex)
                cols["lane"].append(lane_index[(t_index, track, s.lane)])
                cols["v"].append(vertex)
                cols["op"].append(intern(ops, s.op))
                cols["ph"].append(0 if s.phase == "forward" else 1)
                cols["step"].append(s.step)
                cols["run"].append(s.run)
                shape_key = (s.input_shapes, s.shape, s.dtype)
                found = shape_text.get(shape_key)
                if found is None:
                    text = ", ".join("(" + ", ".join(map(str, x)) + ")" for x in s.input_shapes)
                    if s.dtype:
                        text += f" -> ({', '.join(map(str, s.shape))}) {s.dtype}"
                    found = shape_text[shape_key] = intern(shapes, text)
                cols["shp"].append(found)
                cols["fused"].append(-1 if not s.fused else intern(fused_names, s.fused))
                if s.phase == "forward" and vertex not in inputs:
                    inputs[vertex] = [intern(names, n) for n in s.inputs]
                if (s.run, s.step, s.vertex, s.phase) in on_path:
                    critical.append(i)
            for w in tr.waits:
                if w.track != track or len(waits) >= MAX_WAITS:
                    continue
                lane = lane_index.get((t_index, track, w.lane)) if w.lane is not None else None
                if lane is None:  # no thread was held (or none of this track's lanes): a lane of their own
                    lane = lane_index.get((t_index, track, WAITS_LANE))
                    if lane is None:
                        lane = lane_index[(t_index, track, WAITS_LANE)] = len(lanes)
                        lanes.append({"track": key_track, "name": WAITS_LANE})
                waits.append({"lane": lane, "track": key_track, "what": w.what, "v": w.vertex,
                              "s": round((w.start - offset) * 1e6, 2), "e": round((w.end - offset) * 1e6, 2)})
    graph_tracer = compare.concurrent if compare is not None else tracer
    totals: dict[str, float] = defaultdict(float)
    for s in graph_tracer.spans:
        totals[s.vertex] += s.duration
    return {
        "title": title,
        "tracks": tracks,
        "lanes": lanes,
        "names": list(names),
        "ops": list(ops),
        "shapes": list(shapes),
        "fused": list(fused_names),
        "spans": cols,
        "inputs": {str(k): v for k, v in inputs.items()},
        "critical": critical,
        "waits": waits,
        "graph": _graph(graph_tracer, totals),
        "compare": None if compare is None else compare.as_dict(),
        "machine": tracer.metadata,
    }


def _graph(tracer: Tracer, totals: dict[str, float]) -> dict:
    """The traced vertices and their edges, with total time per vertex; chains collapsed when large."""
    g = tracer.graph
    if g is None:
        return {"nodes": [], "edges": [], "collapsed": False}
    names = set(totals)
    kept = [n for n in g.nodes if n.kind != "const" and (n.name in names or any(c.name in names for c in g.consumers(n)))]
    keep = {n.name for n in kept}
    nodes = [{"name": n.name, "op": n.op_name, "kind": n.kind, "t": totals.get(n.name, 0.0) * 1e6, "members": [n.name]}
             for n in kept]
    edges = [[src.name, n.name] for n in kept for src in n.inputs if src.name in keep]
    collapsed = False
    if len(nodes) > GRAPH_LIMIT:
        nodes, edges = _collapse_chains(nodes, edges)
        collapsed = True
    return {"nodes": nodes, "edges": edges, "collapsed": collapsed}


def _collapse_chains(nodes: list[dict], edges: list[list[str]]) -> tuple[list[dict], list[list[str]]]:
    """Merge each chain of op vertices (one producer, one consumer each) into one node."""
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    by_name = {n["name"]: n for n in nodes}
    head_of: dict[str, str] = {}
    for n in nodes:  # in topological order
        name = n["name"]
        p = preds[name]
        if n["kind"] == "op" and len(p) == 1 and len(succs[p[0]]) == 1 and by_name[p[0]]["kind"] == "op":
            head_of[name] = head_of.get(p[0], p[0])
    merged: dict[str, dict] = {}
    for n in nodes:
        head = head_of.get(n["name"], n["name"])
        if head not in merged:
            merged[head] = {"name": head, "op": n["op"], "kind": n["kind"], "t": 0.0, "members": []}
        m = merged[head]
        m["t"] += n["t"]
        m["members"].append(n["name"])
    for m in merged.values():
        if len(m["members"]) > 1:
            m["op"] = f"chain of {len(m['members'])}"
    new_edges = {(head_of.get(a, a), head_of.get(b, b)) for a, b in edges}
    return list(merged.values()), [[a, b] for a, b in sorted(new_edges) if a != b]


def _json_for_script(data: dict) -> str:
    text = dumps(data).decode()
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def write_html(tracer: Tracer, path: str, title: str = "vertexflow trace", compare: Comparison | None = None) -> None:
    with no_gc_pauses():
        data = trace_data(tracer, title, compare)
    page = PAGE.replace("__DATA__", _json_for_script(data))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def save_html(tracer: Tracer, path: str, title: str = "vertexflow trace") -> str:
    """Write a self-contained HTML viewer of the trace (works offline, no network); returns the path."""
    write_html(tracer, path, title=title)
    return path


PAGE = (__import__("pathlib").Path(__file__).with_name("viewer.html")).read_text(encoding="utf-8")
