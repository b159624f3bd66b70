"""The trace viewer: one self-contained HTML file that needs nothing but a browser.

The page carries the spans as JSON inside a `<script type="application/json">`
element (with `<`, `>` and `&` escaped, so no name can close the element) and
draws them with inline JavaScript on a canvas: one lane per worker thread or
stream, zoom (wheel) and pan (drag), a tooltip on hover, producers and
consumers highlighted on click, the critical path outlined, a summary, and a
picture of the graph coloured by time. Names reach the page only through
`textContent` and canvas text, never as HTML. A Content-Security-Policy of
`default-src 'none'` forbids the page any network request.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

from .analysis import summarize

if TYPE_CHECKING:
    from .tracer import Tracer


def trace_data(tracer: Tracer, title: str = "vertexflow trace") -> dict:
    """Everything the page shows, as plain JSON-able data (times in microseconds)."""
    spans = sorted(tracer.spans, key=lambda s: (s.start, s.end))
    origin = min((min(s.ready, s.start) for s in spans), default=0.0)
    lanes = tracer.lanes()
    summary = summarize(tracer, cores=_cores(tracer))
    totals: dict[str, float] = defaultdict(float)
    for s in spans:
        totals[s.vertex] += s.duration
    graph = _graph(tracer, totals)
    return {
        "title": title,
        "lanes": lanes,
        "spans": [
            {
                "v": s.vertex,
                "op": s.op,
                "ph": s.phase,
                "step": s.step,
                "lane": lanes.index(s.lane),
                "r": round((s.ready - origin) * 1e6, 3),
                "s": round((s.start - origin) * 1e6, 3),
                "e": round((s.end - origin) * 1e6, 3),
                "shapes": [list(x) for x in s.input_shapes],
                "in": list(s.inputs),
            }
            for s in spans
        ],
        "summary": summary.as_dict(),
        "graph": graph,
    }


def _graph(tracer: Tracer, totals: dict[str, float]) -> dict:
    """The traced vertices and their edges, with total time per vertex, for the graph picture."""
    g = tracer.graph
    if g is None:
        return {"nodes": [], "edges": []}
    names = set(totals)
    nodes = []
    edges = []
    for node in g.nodes:
        used = node.name in names or any(c.name in names for c in g.consumers(node))
        if not used or node.kind == "const":  # constants only clutter the picture
            continue
        nodes.append({"name": node.name, "op": node.op_name, "kind": node.kind, "t": totals.get(node.name, 0.0) * 1e6})
        for src in node.inputs:
            edges.append([src.name, node.name])
    keep = {n["name"] for n in nodes}
    return {"nodes": nodes, "edges": [e for e in edges if e[0] in keep and e[1] in keep]}


def _cores(tracer: Tracer) -> int:
    """Lanes for the ideal bound: the lanes used, but no more than the machine's cores."""
    from ..machine import cores

    return max(1, min(len(tracer.lanes()), cores()))


def _json_for_script(data: dict) -> str:
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def write_html(tracer: Tracer, path: str, title: str = "vertexflow trace") -> None:
    data = trace_data(tracer, title)
    page = PAGE.replace("__DATA__", _json_for_script(data))
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vertexflow trace</title>
<style>
  body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d232a; background: #fafbfc; }
  header { padding: 12px 18px 4px; }
  h1 { font-size: 18px; margin: 0 0 6px; }
  h2 { font-size: 14px; margin: 14px 0 6px; }
  .cards { display: flex; flex-wrap: wrap; gap: 8px; }
  .card { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 6px 10px; min-width: 110px; }
  .card b { display: block; font-size: 16px; }
  .card span { color: #5b6673; font-size: 11px; }
  main { padding: 0 18px 18px; }
  #timeline-box { position: relative; background: #fff; border: 1px solid #dde1e6; border-radius: 6px; user-select: none; }
  #timeline { display: block; width: 100%; cursor: grab; }
  #timeline.dragging { cursor: grabbing; }
  #tooltip { position: absolute; pointer-events: none; background: #1d232a; color: #fff; padding: 6px 8px; border-radius: 4px; font-size: 12px; white-space: pre; z-index: 2; max-width: 520px; overflow: hidden; }
  #hint { color: #5b6673; font-size: 11px; margin: 4px 0; }
  table { border-collapse: collapse; background: #fff; }
  th, td { border: 1px solid #dde1e6; padding: 3px 8px; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
  #details { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 6px 10px; min-height: 40px; white-space: pre-wrap; }
  #graph-box { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; overflow: auto; max-height: 520px; }
  .bar { display: inline-block; height: 9px; background: #3b82f6; vertical-align: middle; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="cards" id="cards"></div>
</header>
<main>
  <h2>Timeline</h2>
  <div id="hint">Wheel to zoom, drag to pan, double-click to reset. Hover a span for details; click it to highlight its producers (blue) and consumers (green). The critical path is outlined in red.</div>
  <div id="timeline-box"><canvas id="timeline"></canvas><div id="tooltip" hidden></div></div>
  <h2>Selected vertex</h2>
  <div id="details">Click a span.</div>
  <div class="cols">
    <div><h2>Lanes</h2><table id="lanes"><thead><tr><th>lane</th><th>busy</th><th>utilization</th><th>spans</th></tr></thead><tbody></tbody></table></div>
    <div><h2>Top ops by total time</h2><table id="ops"><thead><tr><th>op</th><th>total</th><th>spans</th><th>share</th></tr></thead><tbody></tbody></table></div>
  </div>
  <h2>Graph (vertices coloured by total time)</h2>
  <div id="graph-box"></div>
</main>
<script type="application/json" id="trace-data">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("trace-data").textContent);
  const spans = data.spans, lanes = data.lanes, S = data.summary;
  const $ = (id) => document.getElementById(id);
  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(us) {
    if (!isFinite(us)) return "-";
    if (Math.abs(us) >= 1e6) return (us / 1e6).toFixed(3) + " s";
    if (Math.abs(us) >= 1e3) return (us / 1e3).toFixed(3) + " ms";
    return us.toFixed(1) + " us";
  }
  document.title = data.title;
  $("title").textContent = data.title;

  // -- summary cards ------------------------------------------------------------
  const cards = [
    ["wall time", fmt(S.wall_s * 1e6)],
    ["total work", fmt(S.total_work_s * 1e6)],
    ["average parallelism", S.parallelism.toFixed(2)],
    ["critical path", fmt(S.critical_path_s * 1e6)],
    ["ideal bound", fmt(S.ideal_s * 1e6)],
    ["efficiency (ideal / wall)", (100 * S.efficiency).toFixed(0) + " %"],
    ["lanes", String(lanes.length)],
    ["steps", String(S.steps)],
    ["spans", String(spans.length)],
  ];
  for (const [label, value] of cards) {
    const c = el("div", null, { class: "card" });
    c.appendChild(el("b", value));
    c.appendChild(el("span", label));
    $("cards").appendChild(c);
  }
  const laneBody = $("lanes").querySelector("tbody");
  lanes.forEach((lane, i) => {
    const tr = el("tr");
    const n = spans.filter((s) => s.lane === i).length;
    tr.appendChild(el("td", lane));
    tr.appendChild(el("td", fmt((S.busy_s[lane] || 0) * 1e6)));
    tr.appendChild(el("td", (100 * (S.utilization[lane] || 0)).toFixed(1) + " %"));
    tr.appendChild(el("td", n));
    laneBody.appendChild(tr);
  });
  const opsBody = $("ops").querySelector("tbody");
  for (const op of S.top_ops) {
    const tr = el("tr");
    tr.appendChild(el("td", op.op));
    tr.appendChild(el("td", fmt(op.total_s * 1e6)));
    tr.appendChild(el("td", op.spans));
    const share = S.total_work_s > 0 ? op.total_s / S.total_work_s : 0;
    const td = el("td");
    const bar = el("span", null, { class: "bar" });
    bar.style.width = Math.max(1, Math.round(80 * share)) + "px";
    td.appendChild(bar);
    td.appendChild(document.createTextNode(" " + (100 * share).toFixed(1) + " %"));
    tr.appendChild(td);
    opsBody.appendChild(tr);
  }

  // -- relations: producers, consumers, critical path --------------------------------
  const byKey = new Map();  // "step|vertex|phase" -> span index
  spans.forEach((s, i) => byKey.set(s.step + "|" + s.v + "|" + s.ph, i));
  const consumers = new Map();  // span index -> consumer span indices (same step, forward data edges)
  const producers = new Map();
  spans.forEach((s, i) => {
    if (s.ph !== "forward") return;
    for (const name of s.in) {
      const p = byKey.get(s.step + "|" + name + "|forward");
      if (p === undefined) continue;
      if (!producers.has(i)) producers.set(i, []);
      producers.get(i).push(p);
      if (!consumers.has(p)) consumers.set(p, []);
      consumers.get(p).push(i);
    }
  });
  const critical = new Set((S.critical_path || []).map(([v, ph]) => v + "|" + ph));

  // -- colours ----------------------------------------------------------------------
  const opColour = new Map();
  function colour(op) {
    if (!opColour.has(op)) {
      let h = 0;
      for (let k = 0; k < op.length; k++) h = (h * 31 + op.charCodeAt(k)) >>> 0;
      opColour.set(op, "hsl(" + (h % 360) + ", 55%, 62%)");
    }
    return opColour.get(op);
  }

  // -- timeline -----------------------------------------------------------------------
  const canvas = $("timeline"), ctx = canvas.getContext("2d"), tooltip = $("tooltip");
  const LABEL = 120, ROW = 26, TOP = 22;
  let t0 = 0, t1 = 1;
  for (const s of spans) { t1 = Math.max(t1, s.e); }
  let view = { a: 0, b: t1 * 1.02 };
  let selected = -1, hovered = -1;
  const rects = new Array(spans.length);
  const api = { drawn: 0, spans: spans.length, rects: rects, selected: () => selected };
  window.vfViewer = api;

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.parentElement.clientWidth;
    const height = TOP + ROW * Math.max(lanes.length, 1) + 8;
    canvas.width = width * ratio; canvas.height = height * ratio;
    canvas.style.height = height + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    draw();
  }
  function x(t) { return LABEL + (t - view.a) / (view.b - view.a) * (canvas.clientWidth - LABEL - 8); }
  function tAt(px) { return view.a + (px - LABEL) / (canvas.clientWidth - LABEL - 8) * (view.b - view.a); }
  function related(i) {
    return { p: new Set(selected >= 0 ? producers.get(selected) || [] : []), c: new Set(selected >= 0 ? consumers.get(selected) || [] : []) };
  }
  function draw() {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    // axis
    ctx.fillStyle = "#5b6673";
    const ticks = 8;
    for (let k = 0; k <= ticks; k++) {
      const t = view.a + (view.b - view.a) * k / ticks;
      const px = x(t);
      ctx.fillRect(px, TOP - 4, 1, 4);
      ctx.fillText(fmt(t), Math.min(px + 2, w - 60), 9);
    }
    // lanes
    lanes.forEach((lane, i) => {
      const y = TOP + i * ROW;
      ctx.fillStyle = i % 2 ? "#f4f6f8" : "#ffffff";
      ctx.fillRect(0, y, w, ROW);
      ctx.fillStyle = "#1d232a";
      ctx.fillText(lane, 6, y + ROW / 2);
    });
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL, TOP, w - LABEL, h - TOP); ctx.clip();
    const rel = related(selected);
    let drawn = 0;
    spans.forEach((s, i) => {
      const xa = x(s.s), xb = Math.max(x(s.e), xa + 1);
      const y = TOP + s.lane * ROW + 3, hh = ROW - 6;
      rects[i] = { x: xa, y: y, w: xb - xa, h: hh, visible: xb >= LABEL && xa <= w };
      if (!rects[i].visible) return;
      drawn++;
      ctx.fillStyle = colour(s.op);
      if (selected >= 0 && i !== selected && !rel.p.has(i) && !rel.c.has(i)) ctx.globalAlpha = 0.25;
      ctx.fillRect(xa, y, xb - xa, hh);
      if (s.ph === "backward") { ctx.fillStyle = "rgba(0,0,0,0.18)"; ctx.fillRect(xa, y + hh / 2, xb - xa, hh / 2); }
      ctx.globalAlpha = 1;
      let stroke = null;
      if (critical.has(s.v + "|" + s.ph)) stroke = "#d62828";
      if (rel.p.has(i)) stroke = "#1d4ed8";
      if (rel.c.has(i)) stroke = "#15803d";
      if (i === selected || i === hovered) stroke = "#111";
      if (stroke) { ctx.strokeStyle = stroke; ctx.lineWidth = 2; ctx.strokeRect(xa + 1, y + 1, Math.max(xb - xa - 2, 1), hh - 2); }
      if (xb - xa > 24) { ctx.fillStyle = "#111"; ctx.fillText(s.v, xa + 3, y + hh / 2, xb - xa - 6); }
    });
    if (selected >= 0) {  // data edges of the selection
      ctx.lineWidth = 1.5;
      for (const [set, col, dir] of [[rel.p, "#1d4ed8", 1], [rel.c, "#15803d", -1]]) {
        ctx.strokeStyle = col;
        for (const j of set) {
          const a = dir > 0 ? rects[j] : rects[selected], b = dir > 0 ? rects[selected] : rects[j];
          ctx.beginPath(); ctx.moveTo(a.x + a.w, a.y + a.h / 2); ctx.lineTo(b.x, b.y + b.h / 2); ctx.stroke();
        }
      }
    }
    ctx.restore();
    api.drawn = drawn;
  }
  function hit(px, py) {
    for (let i = spans.length - 1; i >= 0; i--) {
      const r = rects[i];
      if (r && r.visible && px >= r.x - 1 && px <= r.x + r.w + 1 && py >= r.y && py <= r.y + r.h) return i;
    }
    return -1;
  }
  function describe(i) {
    const s = spans[i];
    const lines = [
      "vertex: " + s.v, "op: " + s.op, "phase: " + s.ph, "step: " + s.step, "lane: " + lanes[s.lane],
      "start: " + fmt(s.s), "duration: " + fmt(s.e - s.s), "waited for a lane: " + fmt(s.s - s.r),
      "input shapes: " + s.shapes.map((x) => "(" + x.join(", ") + ")").join(", "),
    ];
    if (s.in.length) lines.push("inputs: " + s.in.join(", "));
    return lines.join("\\n");
  }
  let drag = null;
  canvas.addEventListener("mousemove", (ev) => {
    const box = canvas.getBoundingClientRect();
    const px = ev.clientX - box.left, py = ev.clientY - box.top;
    if (drag) {
      const dt = (drag.px - px) / (canvas.clientWidth - LABEL - 8) * (drag.b - drag.a);
      view = { a: drag.a + dt, b: drag.b + dt };
      drag.moved = true;
      draw();
      return;
    }
    const i = hit(px, py);
    if (i !== hovered) { hovered = i; draw(); }
    if (i >= 0) {
      tooltip.textContent = describe(i);
      tooltip.hidden = false;
      tooltip.style.left = Math.min(px + 14, canvas.clientWidth - 300) + "px";
      tooltip.style.top = (py + 14) + "px";
    } else {
      tooltip.hidden = true;
    }
  });
  canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; hovered = -1; draw(); });
  canvas.addEventListener("mousedown", (ev) => {
    const box = canvas.getBoundingClientRect();
    drag = { px: ev.clientX - box.left, a: view.a, b: view.b, moved: false };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const moved = drag.moved;
    drag = null;
    canvas.classList.remove("dragging");
    if (moved) return;
    const box = canvas.getBoundingClientRect();
    const i = hit(ev.clientX - box.left, ev.clientY - box.top);
    if (ev.target !== canvas) return;
    selected = i;
    $("details").textContent = i >= 0 ? describe(i) + "\\nproducers: " + (producers.get(i) || []).map((j) => spans[j].v).join(", ")
      + "\\nconsumers: " + (consumers.get(i) || []).map((j) => spans[j].v).join(", ") : "Click a span.";
    draw();
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const box = canvas.getBoundingClientRect();
    const px = Math.max(ev.clientX - box.left, LABEL);
    const t = tAt(px);
    const f = Math.exp(ev.deltaY * 0.0015);
    const span = Math.max((view.b - view.a) * f, 0.5);
    const left = (t - view.a) / (view.b - view.a);
    view = { a: t - left * span, b: t - left * span + span };
    draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { view = { a: 0, b: t1 * 1.02 }; draw(); });
  window.addEventListener("resize", resize);
  api.zoom = (a, b) => { view = { a: a, b: b }; draw(); };
  resize();

  // -- graph picture ---------------------------------------------------------------------
  const G = data.graph;
  const box = $("graph-box");
  if (!G.nodes.length) { box.appendChild(el("div", "No graph recorded.")); return; }
  if (G.nodes.length > 600) { box.appendChild(el("div", "Graph too large to draw (" + G.nodes.length + " vertices).")); return; }
  const index = new Map(G.nodes.map((n, i) => [n.name, i]));
  const preds = G.nodes.map(() => []);
  for (const [a, b] of G.edges) preds[index.get(b)].push(index.get(a));
  const depth = G.nodes.map(() => 0);
  G.nodes.forEach((n, i) => { for (const p of preds[i]) depth[i] = Math.max(depth[i], depth[p] + 1); });
  const layers = [];
  G.nodes.forEach((n, i) => { (layers[depth[i]] = layers[depth[i]] || []).push(i); });
  const NW = 120, NH = 34, GX = 24, GY = 46;
  const widest = Math.max(...layers.map((l) => l.length));
  const width = widest * (NW + GX) + GX, height = layers.length * (NH + GY) + GY;
  const pos = [];
  layers.forEach((layer, d) => layer.forEach((i, k) => {
    const off = (width - layer.length * (NW + GX)) / 2;
    pos[i] = { x: off + GX / 2 + k * (NW + GX), y: GY / 2 + d * (NH + GY) };
  }));
  const maxT = Math.max(...G.nodes.map((n) => n.t), 1e-9);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height); svg.setAttribute("id", "graph");
  for (const [a, b] of G.edges) {
    const p = pos[index.get(a)], q = pos[index.get(b)];
    const line = document.createElementNS(NS, "line");
    line.setAttribute("x1", p.x + NW / 2); line.setAttribute("y1", p.y + NH);
    line.setAttribute("x2", q.x + NW / 2); line.setAttribute("y2", q.y);
    line.setAttribute("stroke", "#9aa5b1"); line.setAttribute("stroke-width", "1");
    svg.appendChild(line);
  }
  G.nodes.forEach((n, i) => {
    const g = document.createElementNS(NS, "g");
    const r = document.createElementNS(NS, "rect");
    const heat = n.t / maxT;
    r.setAttribute("x", pos[i].x); r.setAttribute("y", pos[i].y); r.setAttribute("width", NW); r.setAttribute("height", NH);
    r.setAttribute("rx", n.kind === "op" ? 8 : 2);
    r.setAttribute("fill", n.kind === "op" ? "hsl(" + Math.round(50 - 50 * heat) + ", 90%, " + Math.round(92 - 40 * heat) + "%)" : "#e8eef8");
    r.setAttribute("stroke", "#5b6673");
    const title = document.createElementNS(NS, "title");
    title.textContent = n.name + " (" + n.op + "): " + fmt(n.t);
    const t1n = document.createElementNS(NS, "text");
    t1n.setAttribute("x", pos[i].x + NW / 2); t1n.setAttribute("y", pos[i].y + 14);
    t1n.setAttribute("text-anchor", "middle"); t1n.setAttribute("font-size", "11");
    t1n.textContent = n.name.length > 18 ? n.name.slice(0, 17) + "…" : n.name;
    const t2n = document.createElementNS(NS, "text");
    t2n.setAttribute("x", pos[i].x + NW / 2); t2n.setAttribute("y", pos[i].y + 27);
    t2n.setAttribute("text-anchor", "middle"); t2n.setAttribute("font-size", "10"); t2n.setAttribute("fill", "#5b6673");
    t2n.textContent = n.op + (n.t > 0 ? " · " + fmt(n.t) : "");
    g.appendChild(r); g.appendChild(title); g.appendChild(t1n); g.appendChild(t2n);
    svg.appendChild(g);
  });
  box.appendChild(svg);
})();
</script>
</body>
</html>
"""
