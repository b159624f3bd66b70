"""Tracing: spans per vertex (recording, `tracer.py`) and what reads them: Chrome-trace export
(`chrome.py`), analysis (`analysis.py`), the comparison of two runs (`compare.py`) and the HTML
viewer (`viewer.py`).

The recorder imports none of the readers: their entry points are attached to `Tracer` here, as
JAX attaches array methods to its Tracer from the layer above.
"""

from . import analysis, chrome, compare, viewer
from .analysis import Summary, summarize
from .tracer import Span, Tracer, active_tracer, trace

Tracer.save = chrome.save
Tracer.load = classmethod(chrome.load)
Tracer.save_html = viewer.save_html
Tracer.summary = analysis.summary
Tracer.compare = compare.compare_with

__all__ = ["Span", "Summary", "Tracer", "active_tracer", "summarize", "trace"]
