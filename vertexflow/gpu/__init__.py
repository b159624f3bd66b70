"""Array backends: where vertex values live and which array module (`xp`) computes them."""

from .backend import Backend, get_backend
from .runtime import CheckedStreams, CupyStreams, EmulatedStreams
from .streams import StreamPlan, plan_streams

# StreamExecutor lives in vertexflow.gpu.executor (it builds on vertexflow.executor, which uses this package).
__all__ = ["Backend", "CheckedStreams", "CupyStreams", "EmulatedStreams", "StreamPlan", "get_backend", "plan_streams"]
