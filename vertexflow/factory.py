"""Executors by name: the one factory that `nn`, `onnx`, the Ray partitions and the CLI build executors with.

It sits above the executors it names, so that `executor.py` (the interface and
the tape) imports none of its subclasses.
"""

from __future__ import annotations

from .actors import ActorExecutor
from .errors import GraphError
from .executor import Executor, SequentialExecutor
from .graph import Graph
from .streams import StreamExecutor

EXECUTORS = ("sequential", "actor", "stream")


def make_executor(graph: Graph, executor: str | Executor = "sequential", **options) -> Executor:
    """An executor of `graph` from its name ("sequential", "actor", "stream"), or `executor` itself.

    Options go to the executor's constructor (e.g. threads=2 for "actor").

    Raises:
        GraphError: an unknown name, or an executor of another graph.
    """
    if isinstance(executor, Executor):
        if executor.graph is not graph:
            raise GraphError(f"the executor given runs graph {executor.graph.name!r}, not {graph.name!r}")
        return executor
    if executor == "sequential":
        return SequentialExecutor(graph, **options)
    if executor == "actor":
        return ActorExecutor(graph, **options)
    if executor == "stream":
        return StreamExecutor(graph, **options)
    raise GraphError(f"unknown executor {executor!r}; use 'sequential', 'actor' or 'stream' (or pass an Executor)")
