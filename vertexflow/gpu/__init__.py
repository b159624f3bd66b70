"""Below the executors: array backends (numpy, cupy), the stream planner, and the stream runtimes."""

from .backend import Backend, get_backend
from .runtime import CheckedStreams, CupyStreams, EmulatedStreams
from .streams import StreamPlan, plan_streams

__all__ = ["Backend", "CheckedStreams", "CupyStreams", "EmulatedStreams", "StreamPlan", "get_backend", "plan_streams"]
