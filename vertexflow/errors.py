"""The exception types of vertexflow, every one of them.

Every error vertexflow raises on purpose derives from `VertexflowError`, so a
caller can catch them all at once or one kind at a time. `InternalError` is
apart: it means vertexflow itself is wrong, not the caller.
"""

from __future__ import annotations


class VertexflowError(Exception):
    """Base of every error vertexflow raises on purpose."""

    def __reduce__(self):
        # Errors cross process boundaries (Ray partitions): keep the attributes, whatever the
        # constructor's keyword-only arguments, and the chained cause where it pickles.
        cause = self.__cause__
        if cause is not None:
            import pickle

            try:
                pickle.dumps(cause)
            except Exception:  # noqa: BLE001 - an unpicklable cause stays behind, its text in the message
                cause = None
        return (_restore, (type(self), self.args, self.__dict__, cause))


def _restore(cls, args: tuple, state: dict, cause: BaseException | None = None) -> VertexflowError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    error.__cause__ = cause
    return error


class ShapeError(VertexflowError, ValueError):
    """Shapes or dtypes that an op cannot take, found when its vertex is built."""


class FeedError(VertexflowError, ValueError):
    """Missing, unknown, mis-shaped or mis-typed feeds, refused before any vertex runs."""


class GraphError(VertexflowError):
    """A graph that cannot be run: cycles, nodes of another graph, unknown names."""


class VertexError(VertexflowError):
    """A vertex failed while running; the original exception is chained as __cause__.

    Attributes:
        vertex: name of the vertex that failed.
        op: name of its op.
        input_shapes: shapes of the arrays it was given.
    """

    def __init__(self, message: str, *, vertex: str, op: str, input_shapes: tuple = ()):
        super().__init__(message)
        self.vertex = vertex
        self.op = op
        self.input_shapes = tuple(input_shapes)


class ExecutionTimeout(VertexflowError, TimeoutError):
    """A step did not finish in time.

    Attributes:
        waiting: {vertex name: description of what it still waits for}.
    """

    def __init__(self, message: str, *, waiting: dict[str, str] | None = None):
        super().__init__(message)
        self.waiting = dict(waiting or {})


class AsyncContextError(VertexflowError, RuntimeError):
    """A blocking call made inside an event loop, or a coroutine awaited outside one."""


class MissingExtraError(VertexflowError, ImportError):
    """An optional extra that a feature needs is not installed (the message says which, and how to get it)."""


class ExecutorClosed(VertexflowError, RuntimeError):
    """The executor was closed (or its host went away) while a call was waiting on it."""


class PartitionLost(VertexflowError, RuntimeError):
    """A partition's process (a Ray actor) died during a call; it is placed again for the next call.

    Attributes:
        partitions: the numbers of the partitions that were lost.
        nodes: the Ray node ids they ran on ("?" where a partition died before saying).
    """

    def __init__(self, message: str, *, partitions: tuple = (), nodes: tuple = ()):
        super().__init__(message)
        self.partitions = tuple(partitions)
        self.nodes = tuple(nodes)


class DeviceError(VertexflowError, RuntimeError):
    """The requested device cannot be used (cupy missing, no CUDA device)."""


class GradientMismatch(VertexflowError, AssertionError):
    """Analytic and numeric gradients disagree beyond the tolerances (`vf.check_grad`).

    Attributes:
        report: {vertex name: (max abs error, analytic, numeric)}.
    """

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class ModelFileError(VertexflowError, ValueError):
    """A model file that cannot be loaded into this model: corrupt, truncated or mismatched."""


class DataFileError(VertexflowError, ValueError):
    """A data file (IDX, ...) that is not what it claims to be: bad magic, truncated, wrong size."""


class UnsupportedOnnxError(VertexflowError, ValueError):
    """Nodes of an ONNX model that vertexflow cannot import; `nodes` lists (op type, node name, reason)."""

    def __init__(self, message: str, nodes: list[tuple[str, str, str]]):
        super().__init__(message)
        self.nodes = nodes


class BenchmarkError(VertexflowError, ValueError):
    """A benchmark that cannot be made: a target that does not build, an unknown executor,
    or executors whose results differ (checked before anything is timed)."""


class CommandLineError(VertexflowError, ValueError):
    """A mistake in a `vertexflow` command line, found before any work starts."""


class InternalError(VertexflowError, AssertionError):
    """One of vertexflow's own invariants is broken: a bug in vertexflow, please report it."""
