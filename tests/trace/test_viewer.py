"""The HTML trace viewer in a real headless Chromium (Debian's chromium, driven by Playwright)."""

import math
import os
import time

import numpy as np
import pytest

import vertexflow as vf
from vertexflow.trace.tracer import Wait

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = os.environ.get("VERTEXFLOW_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")

EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    events = {"errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    url = "file://" + str(path)
    page.goto(url)
    _wait_until(page, "window.vfViewer !== undefined && window.vfViewer.readyMs > 0")
    return page, events, url


def _wait_until(page, expression: str, timeout: float = 10.0) -> None:
    """Poll `expression` in the page until it is true (Playwright's wait_for_function polls with eval,
    which the viewer's content security policy forbids, so it fails whenever its first check is false)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout} s: {expression}"
        page.wait_for_timeout(20)


@pytest.fixture
def trace_page(browser, tmp_path):
    g = vf.Graph("viewer")
    x = g.input("x", shape=(64, 64), dtype="float64")
    left = vf.tanh(x @ x, name=EVIL)
    right = vf.sigmoid(x, name="right")
    out = vf.add(left, right, name="out")
    loss = vf.sum(out * out, name="loss")
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as ex, vf.trace() as tracer:
        for _ in range(2):
            ex.run({x: np.eye(64)}, out)
        ex.backward({x: np.eye(64)}, loss, [x])
    path = tracer.save_html(str(tmp_path / "trace.html"))
    page, events, url = _open(browser, path)
    yield page, tracer, events, url
    page.close()


def _span_index(page, vertex, phase="forward"):
    return page.evaluate(f"window.vfViewer.spanIndex({vertex!r}, {phase!r})")


def _hover(page, index):
    rect = page.evaluate(f"window.vfViewer.rect({index})")
    box = page.locator("#timeline").bounding_box()
    page.mouse.move(box["x"] + rect["x"] + rect["w"] / 2, box["y"] + rect["y"] + rect["h"] / 2)


def test_page_loads_offline_without_errors(trace_page):
    page, tracer, events, url = trace_page
    assert events["errors"] == []
    assert events["requests"] == [url]  # the page itself, nothing else
    assert page.evaluate("window.vfViewer.spans") == len(tracer.spans)
    assert page.evaluate("window.vfViewer.drawn") == len(tracer.spans)
    assert page.locator("#summaries .card").count() >= 8
    assert page.locator("#lanes tbody tr").count() == len(tracer.lanes())
    assert page.locator("#graph-box svg g").count() >= 4


def test_hover_shows_the_vertex_and_names_stay_text(trace_page):
    page, tracer, events, url = trace_page
    _hover(page, _span_index(page, "right"))
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible() and "vertex: right" in tooltip.text_content()
    _hover(page, _span_index(page, EVIL))
    assert f"vertex: {EVIL}" in tooltip.text_content()
    page.mouse.down()
    page.mouse.up()
    assert EVIL in page.locator("#details").text_content()
    assert page.locator("img").count() == 0
    assert events["dialogs"] == [] and events["errors"] == []
    assert EVIL in page.locator("#graph-box").text_content()


def test_click_shows_producers_consumers_and_the_vertex_durations(trace_page):
    page, tracer, events, url = trace_page
    out = _span_index(page, "out")
    _hover(page, out)
    page.mouse.down()
    page.mouse.up()
    details = page.locator("#details").text_content()
    assert "producers: " in details and "right" in details.split("producers: ")[1]
    assert page.evaluate("window.vfViewer.selected()") == out
    assert page.evaluate("window.vfViewer.histogram.spans") == 3  # two runs and the backward's forward
    page.keyboard.press("Escape")
    assert page.evaluate("window.vfViewer.selected()") == -1


def test_search_filters_by_text_and_by_field(trace_page):
    page, tracer, events, url = trace_page
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search"
    page.keyboard.type("op:tanh")
    assert page.evaluate("window.vfViewer.filterCount()") == sum(1 for s in tracer.spans if s.op == "tanh")
    page.fill("#search", "phase:backward")
    assert page.evaluate("window.vfViewer.filterCount()") == sum(1 for s in tracer.spans if s.phase == "backward")
    page.fill("#search", "right step:0 lane:vf-worker")
    want = sum(1 for s in tracer.spans if "right" in s.vertex and s.lane.startswith("vf-worker"))
    assert page.evaluate("window.vfViewer.filterCount()") == want
    assert "match" in page.locator("#matches").text_content()
    page.fill("#search", "")
    assert page.evaluate("window.vfViewer.filterCount()") == len(tracer.spans)


def test_range_selection_gives_per_vertex_and_per_op_statistics(trace_page):
    page, tracer, events, url = trace_page
    view = page.evaluate("window.vfViewer.view()")
    box = page.locator("#timeline").bounding_box()
    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + 200, box["y"] + 60)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 10, box["y"] + 60, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    assert page.evaluate("window.vfViewer.range()") is not None
    page.evaluate(f"window.vfViewer.setRange({view['a']}, {view['b']})")  # everything
    ops = {r["name"]: r for r in page.evaluate("window.vfViewer.rangeOps")}
    tanh = [s.duration * 1e6 for s in tracer.spans if s.op == "tanh"]
    assert ops["tanh"]["count"] == len(tanh)
    assert ops["tanh"]["total"] == pytest.approx(sum(tanh), rel=1e-3)
    assert ops["tanh"]["min"] <= ops["tanh"]["mean"] <= ops["tanh"]["max"]
    assert ops["tanh"]["p95"] <= ops["tanh"]["max"]
    vertices = {r["name"] for r in page.evaluate("window.vfViewer.rangeVertices")}
    assert "out (backward)" in vertices and "out" in vertices  # the phases apart
    assert page.locator("#range-ops tbody tr").count() == len(ops)


def test_keys_zoom_and_pan(trace_page):
    page, tracer, events, url = trace_page
    before = page.evaluate("window.vfViewer.view()")
    page.keyboard.press("w")
    page.wait_for_timeout(50)
    zoomed = page.evaluate("window.vfViewer.view()")
    assert zoomed["b"] - zoomed["a"] < before["b"] - before["a"]
    page.keyboard.press("d")
    page.wait_for_timeout(50)
    panned = page.evaluate("window.vfViewer.view()")
    assert panned["a"] > zoomed["a"]
    page.keyboard.press("s")
    page.keyboard.press("a")
    page.locator("#timeline").dblclick()
    # The whole trace is drawn again on the next animation frame: wait for it (a loaded machine may be late).
    _wait_until(page, f"window.vfViewer.drawn === {len(tracer.spans)}")


def test_clicking_a_vertex_in_the_graph_shows_its_spans(trace_page):
    page, tracer, events, url = trace_page
    page.locator('#graph-box g[data-vertex="right"]').click()
    assert page.evaluate("window.vfViewer.filterCount()") == sum(1 for s in tracer.spans if s.vertex == "right")
    assert page.evaluate("window.vfViewer.selected()") == _span_index(page, "right")


def test_the_compare_view_shows_why(browser, tmp_path):
    from vertexflow.benchmarks.families import wide

    w = wide(branches=2, depth=2, rows=64, cols=128)
    seq = vf.SequentialExecutor(w.graph)
    with vf.ActorExecutor(w.graph, threads=2, schedule="network") as act:
        with vf.trace() as ts:
            seq.run(w.feeds, w.fetch)
        with vf.trace() as ta:
            act.run(w.feeds, w.fetch)
    path = ts.compare(ta).save_html(str(tmp_path / "compare.html"))
    page, events, url = _open(browser, path)
    assert events["errors"] == []
    assert page.locator("#compare-box").is_visible()
    assert page.locator("#breakdown div").count() == 5
    legend = [li.text_content() for li in page.locator("#legend li").all()]
    # every part named whole in a legend (the bar itself carries no text to cut), per step
    assert len(legend) >= 5 and all("per step" in text for text in legend[:5])
    assert legend[0].startswith("ideal (the sequential work, perfectly overlapped)")
    assert not page.locator("#ran-as").is_visible()  # it ran as the network: nothing to say
    slowed = page.evaluate("window.vfViewer.compare.slowed")
    c = ts.compare(ta)
    assert slowed == [v.vertex for v in c.slowed()][:15]  # only vertices that slowed
    assert page.locator(".track-title").count() == 2
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    page.close()


def test_the_compare_view_says_when_the_actor_executor_ran_as_the_tape(browser, tmp_path):
    g = vf.Graph()
    x = g.input("x", shape=(64, 64), dtype="float64")
    out = vf.tanh(vf.exp(x * 0.1))  # one chain: auto keeps the tape
    seq = vf.SequentialExecutor(g)
    with vf.ActorExecutor(g, threads=2) as act:
        for _ in range(3):
            act.run({x: np.ones((64, 64))}, out)
        with vf.trace() as ts:
            seq.run({x: np.ones((64, 64))}, out)
        with vf.trace() as ta:
            act.run({x: np.ones((64, 64))}, out)
    c = ts.compare(ta)
    assert c.ran_as_tape and "no two expensive vertices can run at once" in c.ran_as_tape
    assert c.breakdown()[-1][0].startswith("the tape's own overhead")
    page, events, url = _open(browser, c.save_html(str(tmp_path / "tape.html")))
    assert events["errors"] == []
    note = page.locator("#ran-as")
    assert note.is_visible() and "ran these calls as one actor, on the tape" in note.text_content()
    assert not any("hand-off overhead" in li.text_content() for li in page.locator("#legend li").all())
    assert "runs as: tape" in page.locator("#summaries").text_content()
    page.close()


def test_waits_are_drawn_and_a_click_hits_the_one_pixel_span_under_it(browser, tmp_path):
    g = vf.Graph("thin")
    x = g.input("x", shape=(4,))
    wide_span, thin, after = vf.exp(x, name="wide"), vf.tanh(x, name="thin"), vf.sigmoid(x, name="after")
    tracer = vf.Tracer()
    # on one lane: a 1 ms span, then a 1 us span right after it, then a 1 ms span 0.2 ms later
    t0 = tracer.origin
    for node, start, end in [(wide_span, 0.0, 1e-3), (thin, 1.0e-3, 1.001e-3), (after, 1.2e-3, 2.2e-3)]:
        tracer.record(node, "forward", 0, "vf-worker-0", t0 + start, t0 + start, t0 + end, [np.zeros(4)])
    tracer.waits.append(Wait("input", "after", 0, 0, 0, None, t0 + 1.001e-3, t0 + 1.2e-3))
    page, events, url = _open(browser, tracer.save_html(str(tmp_path / "thin.html")))
    assert events["errors"] == [] and page.evaluate("window.vfViewer.waitsDrawn") == 1
    index = _span_index(page, "thin")
    rect = page.evaluate(f"window.vfViewer.rect({index})")
    assert rect["w"] <= 1.5  # a pixel wide at this zoom
    box = page.locator("#timeline").bounding_box()
    # a mouse event lands on a whole pixel: the one the mark covers (it is drawn a pixel wide from rect x)
    px = math.floor(box["x"] + rect["x"]) + 1
    assert box["x"] + rect["x"] <= px <= box["x"] + rect["x"] + rect["w"]
    page.mouse.click(px, box["y"] + rect["y"] + rect["h"] / 2)
    assert page.evaluate("window.vfViewer.selected()") == index
    page.close()


def test_a_large_trace_stays_fast(browser, tmp_path):
    """100,000 spans on 4 lanes: the figures are printed, not asserted (this machine is noisy)."""
    g = vf.Graph("large")
    x = g.input("x", shape=(4,))
    nodes = [vf.exp(x, name=f"v{k}") for k in range(50)]
    tracer = vf.Tracer()
    rng = np.random.default_rng(0)
    t = [tracer.origin] * 4
    for i in range(100_000):
        lane = i % 4
        d = float(rng.exponential(20e-6))
        tracer.record(nodes[i % 50], "forward", i // 400, f"vf-worker-{lane}", t[lane], t[lane], t[lane] + d,
                      [np.zeros(4)])
        t[lane] += d + 2e-6
    start = time.perf_counter()
    tracer.save(str(tmp_path / "large.json"))
    saved = time.perf_counter() - start
    start = time.perf_counter()
    vf.Tracer.load(str(tmp_path / "large.json"))
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    tracer.save_html(str(tmp_path / "large.html"))
    written = time.perf_counter() - start
    size = os.path.getsize(tmp_path / "large.html") / 2**20
    page, events, url = _open(browser, tmp_path / "large.html")
    ready = page.evaluate("window.vfViewer.readyMs")
    redraws = []
    end = (max(t) - tracer.origin) * 1e6
    for a, b in [(0, 2e3), (1e5, 1.1e5), (0, end), (5e5, 5e5 + 50), (0, end / 2), (end / 3, end / 3 + 1)]:
        page.evaluate(f"window.vfViewer.zoom({a}, {b})")
        redraws.append(page.evaluate("window.vfViewer.lastDrawMs"))
    page.evaluate(f"window.vfViewer.zoom(0, {end})")
    box = page.locator("#timeline").bounding_box()
    page.mouse.move(box["x"] + 500, box["y"] + 55)
    hover = page.evaluate("window.vfViewer.lastHitMs")
    print(f"\n100,000 spans: Chrome JSON saved in {saved:.2f} s, read back in {loaded:.2f} s, HTML written in "
          f"{written:.2f} s ({size:.1f} MB); "
          f"viewer ready in {ready:.0f} ms; redraws {', '.join(f'{r:.1f}' for r in redraws)} ms; hover {hover:.2f} ms")
    assert events["errors"] == [] and page.evaluate("window.vfViewer.spans") == 100_000
    page.close()
