"""Tracing: spans per vertex, Chrome-trace export, analysis, and the HTML viewer."""

from .analysis import Summary, summarize
from .tracer import Span, Tracer, active_tracer, trace

__all__ = ["Span", "Summary", "Tracer", "active_tracer", "summarize", "trace"]
