"""The HTML trace viewer in a real headless Chromium (Debian's chromium, driven by Playwright)."""

import os

import numpy as np
import pytest

import vertexflow as vf

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'vertexflow[test]')")
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


@pytest.fixture
def trace_page(browser, tmp_path):
    g = vf.Graph("viewer")
    x = g.input("x", shape=(64, 64), dtype="float64")
    left = vf.tanh(x @ x, name=EVIL)
    right = vf.sigmoid(x, name="right")
    out = vf.add(left, right, name="out")
    with vf.ActorExecutor(g, threads=2, heavy_flops=0, schedule="network") as ex, vf.trace() as tracer:
        for _ in range(2):
            ex.run({x: np.eye(64)}, out)
    path = tracer.save_html(str(tmp_path / "trace.html"))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    events = {"errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    url = "file://" + path
    page.goto(url)
    page.wait_for_function("window.vfViewer !== undefined")
    yield page, tracer, events, url
    page.close()


def _hover(page, index):
    rect = page.evaluate(f"window.vfViewer.rects[{index}]")
    box = page.locator("#timeline").bounding_box()
    page.mouse.move(box["x"] + rect["x"] + rect["w"] / 2, box["y"] + rect["y"] + rect["h"] / 2)


def test_page_loads_offline_without_errors(trace_page):
    page, tracer, events, url = trace_page
    assert events["errors"] == []
    assert events["requests"] == [url]  # the page itself, nothing else
    assert page.evaluate("window.vfViewer.drawn") == len(tracer.spans)
    assert page.locator("#cards .card").count() >= 6
    assert page.locator("#lanes tbody tr").count() == len(tracer.lanes())
    assert page.locator("#graph-box svg g").count() >= 4  # the graph picture


def test_hover_shows_the_vertex_and_names_stay_text(trace_page):
    page, tracer, events, url = trace_page
    spans = page.evaluate("JSON.parse(document.getElementById('trace-data').textContent).spans")
    right = next(i for i, s in enumerate(spans) if s["v"] == "right")
    _hover(page, right)
    tooltip = page.locator("#tooltip")
    assert tooltip.is_visible()
    assert "vertex: right" in tooltip.text_content()
    evil = next(i for i, s in enumerate(spans) if s["v"] == EVIL)
    _hover(page, evil)
    assert f"vertex: {EVIL}" in tooltip.text_content()
    page.mouse.down()
    page.mouse.up()
    assert EVIL in page.locator("#details").text_content()
    assert page.locator("img").count() == 0
    assert events["dialogs"] == [] and events["errors"] == []
    assert EVIL in page.locator("#graph-box").text_content()


def test_click_highlights_producers_and_consumers(trace_page):
    page, tracer, events, url = trace_page
    spans = page.evaluate("JSON.parse(document.getElementById('trace-data').textContent).spans")
    out = next(i for i, s in enumerate(spans) if s["v"] == "out")
    _hover(page, out)
    page.mouse.down()
    page.mouse.up()
    details = page.locator("#details").text_content()
    assert "producers: " in details and "right" in details.split("producers: ")[1]
    assert page.evaluate("window.vfViewer.selected()") == out


def test_zoom_keeps_only_the_visible_spans(trace_page):
    page, tracer, events, url = trace_page
    spans = page.evaluate("JSON.parse(document.getElementById('trace-data').textContent).spans")
    first = min(spans, key=lambda s: s["s"])
    page.evaluate(f"window.vfViewer.zoom({first['s']}, {first['e']})")
    drawn = page.evaluate("window.vfViewer.drawn")
    assert 1 <= drawn < len(spans)
    page.locator("#timeline").dblclick()
    assert page.evaluate("window.vfViewer.drawn") == len(spans)
