"""What a benchmark runs: a graph, its feeds and fetches, how to run it, and how to build it again.

A `Workload` is one unit of work to time: one step (`mode="run"`), a
training step (`"backward"`, forward and backward from `loss`), or a stream
of batches (`"stream"`). Its `recipe` says how a fresh process builds the
same workload again: a graph family with its sizes, a function in a Python
file (`vertexflow bench my_model.py:build`), or an ONNX file. A workload
made from a graph in memory has no recipe; it is timed in forked processes.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BenchmarkError as WorkloadError
from ..graph import Graph, Node, ancestors

MODES = ("run", "backward", "stream")


@dataclass
class Workload:
    """One unit of work to time, on a graph.

    Attributes:
        name: how reports call it.
        graph, fetch, feeds: the graph, what to fetch, and one step's feeds.
        mode: "run", "backward" or "stream".
        loss: the scalar to differentiate in "backward" mode.
        batches: the stream's feeds, one mapping per step ("stream" mode).
        numpy: the same work written by hand, where there is such a version.
        by_hand: other versions written by hand, by peer name ("trio-by-hand", ...).
        recipe: how to build it again in a fresh process (None: only by forking).
        family, params: the graph family and sizes it came from, if any.
        onnx_path: the ONNX file it was imported from, if any (for onnxruntime as a peer).
    """

    name: str
    graph: Graph
    fetch: list[Node]
    feeds: dict
    mode: str = "run"
    loss: Node | None = None
    batches: list[dict] = field(default_factory=list)
    numpy: Callable[[], Any] | None = None
    recipe: dict | None = None
    family: str | None = None
    params: dict = field(default_factory=dict)
    onnx_path: str | None = None
    by_hand: dict[str, Callable[[], Any]] = field(default_factory=dict)  # more peers written by hand, by name

    def __post_init__(self):
        if self.mode not in MODES:
            raise WorkloadError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "backward" and self.loss is None:
            raise WorkloadError("mode='backward' needs loss= (the scalar vertex to differentiate)")
        if self.mode == "stream" and not self.batches:
            self.batches = [self.feeds] * 16

    @property
    def vertices(self) -> int:
        """Op vertices one unit runs."""
        targets = list(self.fetch) + ([self.loss] if self.loss is not None else [])
        return sum(1 for n in ancestors(targets) if n.kind == "op")


def from_graph(graph: Graph, feeds: Mapping, fetch, *, mode: str = "run", loss=None, batches=None,
               name: str | None = None) -> Workload:
    """A workload from a graph in memory (`vf.benchmark(graph, feeds, fetch, ...)`).

    Raises:
        WorkloadError: not a graph, an unknown mode, or backward without a loss.
        GraphError: fetches or loss that are not vertices of the graph.
    """
    if not isinstance(graph, Graph):
        raise WorkloadError(f"vf.benchmark: the first argument is the graph (a vf.Graph), got {type(graph).__name__}")
    if mode not in MODES:
        raise WorkloadError(f"vf.benchmark: mode= must be one of {', '.join(MODES)}, got {mode!r}")
    if fetch is None:
        if loss is None:
            raise WorkloadError("vf.benchmark: give fetch= (the vertices to compute) or loss=")
        fetch = [loss]
    items = [fetch] if isinstance(fetch, (Node, str)) else list(fetch)
    if not items:
        raise WorkloadError("vf.benchmark: fetch= is empty; give the vertices to compute")
    nodes = [graph.resolve(f) for f in items]
    loss_node = graph.resolve(loss) if loss is not None else None
    if mode == "backward" and loss_node is None:
        loss_node = nodes[0] if nodes[0].shape == () else None
        if loss_node is None:
            raise WorkloadError("vf.benchmark: mode='backward' needs loss= (the scalar vertex to differentiate)")
    if feeds is not None and not isinstance(feeds, Mapping):
        raise WorkloadError(f"vf.benchmark: feeds must be a mapping of inputs to arrays, got {type(feeds).__name__}")
    return Workload(name or graph.name, graph, nodes, dict(feeds or {}), mode, loss_node,
                    list(batches) if batches is not None else [])


def from_script(path: str, function: str = "build") -> Workload:
    """A workload from `function()` in the Python file `path` (what `vertexflow bench my_model.py:build` runs).

    The function returns (graph, feeds, fetch), (graph, feeds, fetch, loss), or a
    dict with those keys and optionally "mode" and "batches".

    Raises:
        WorkloadError: no such file, no such function, or it returned something else.
    """
    if not os.path.isfile(path):
        raise WorkloadError(f"{path}: no such file")
    try:
        module = runpy.run_path(path, run_name="vertexflow_bench_target")
    except SystemExit as exc:
        raise WorkloadError(f"{path}: exited while being imported ({exc})") from None
    fn = module.get(function)
    if not callable(fn):
        found = sorted(k for k, v in module.items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == "vertexflow_bench_target")
        hint = f"; functions there: {', '.join(found)}" if found else ""
        raise WorkloadError(f"{path} has no function {function!r}{hint}")
    built = fn()
    workload = _from_built(built, f"{path}:{function}")
    workload.recipe = {"kind": "script", "path": os.path.abspath(path), "function": function}
    return workload


def _from_built(built: Any, where: str) -> Workload:
    if isinstance(built, Workload):
        return built
    graph = built.get("graph") if isinstance(built, Mapping) else built[0] if isinstance(built, tuple) else None
    if isinstance(built, (Mapping, tuple)) and graph is not None and not isinstance(graph, Graph):
        raise WorkloadError(f"{where} must return the graph (a vf.Graph) first, then the feeds and what to fetch; "
                            f"the first item it returned is of type {type(graph).__name__}")
    feeds = built.get("feeds") if isinstance(built, Mapping) else built[1] if isinstance(built, tuple) and \
        len(built) > 1 else None
    if feeds is not None and not isinstance(feeds, Mapping):
        raise WorkloadError(f"{where} must return the feeds as a dict of inputs to arrays; the feeds it "
                            f"returned are of type {type(feeds).__name__}")
    if isinstance(built, Mapping):
        try:
            graph, feeds, fetch = built["graph"], built.get("feeds", {}), built.get("fetch")
        except KeyError:
            raise WorkloadError(f"{where} returned a dict without 'graph'") from None
        return from_graph(graph, feeds, fetch, mode=built.get("mode", "backward" if built.get("loss") is not None
                                                              and fetch is None else "run"),
                          loss=built.get("loss"), batches=built.get("batches"), name=where)
    if isinstance(built, tuple) and len(built) in (3, 4):
        graph, feeds, fetch, *rest = built
        loss = rest[0] if rest else None
        return from_graph(graph, feeds, fetch, mode="backward" if loss is not None else "run", loss=loss, name=where)
    raise WorkloadError(f"{where} must return (graph, feeds, fetch), (graph, feeds, fetch, loss) or a dict; "
                        f"it returned {type(built).__name__}")


def random_feed(node: Node, batch: int | None, rng: np.random.Generator) -> np.ndarray:
    """Random data of an input's declared shape (None dimensions take `batch`)."""
    if None in node.shape and batch is None:
        raise WorkloadError(f"input {node.name!r} has shape {node.shape} with a size given by the feed: "
                            "give --batch-size N (or --input NAME=FILE.npy)")
    shape = tuple(batch if d is None else d for d in node.shape)
    if node.dtype.kind == "f":
        return rng.standard_normal(shape).astype(node.dtype)
    if node.dtype.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(node.dtype)  # 0 and 1 index any axis
    if node.dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise WorkloadError(f"input {node.name!r} has dtype {node.dtype}, for which no random data is made")


def from_onnx(path: str, inputs: Mapping[str, str] | None = None, batch: int | None = None,
              seed: int = 0) -> Workload:
    """A workload from an ONNX file: its outputs from feeds read from .npy files or made at random.

    Args:
        inputs: {input name: path of a .npy file}; inputs not given get random data.
        batch: the size of dimensions the file leaves open, for random data.

    Raises:
        WorkloadError: a missing file, an unknown input name, an array of the wrong shape.
    """
    from .. import onnx as vf_onnx

    if not os.path.isfile(path):
        raise WorkloadError(f"{path}: no such file")
    model = vf_onnx.load(path)
    by_name = {n.name: n for n in model.inputs}
    feeds = {}
    for name, file in (inputs or {}).items():
        if name not in by_name:
            raise WorkloadError(f"{path} has no input {name!r}; its inputs: "
                                f"{', '.join(f'{n.name} {n.spec}' for n in model.inputs)}")
        feeds[by_name[name]] = _load_npy(file, by_name[name])
    rng = np.random.default_rng(seed)
    for node in model.inputs:
        if node not in feeds:
            feeds[node] = random_feed(node, batch, rng)
    workload = Workload(os.path.basename(path), model.graph, list(model.outputs), feeds, onnx_path=os.path.abspath(path))
    workload.recipe = {"kind": "onnx", "path": os.path.abspath(path), "inputs": dict(inputs or {}),
                       "batch": batch, "seed": seed}
    return workload


def _load_npy(file: str, node: Node) -> np.ndarray:
    if not os.path.isfile(file):
        raise WorkloadError(f"{file}: no such file (for input {node.name!r})")
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise WorkloadError(f"{file}: not a .npy array file ({exc})") from None
    if not node.spec.matches(array.shape):
        raise WorkloadError(f"{file}: shape {array.shape} does not fit input {node.name!r} {node.spec}")
    return array


def from_recipe(recipe: Mapping) -> Workload:
    """Build the workload a recipe describes (in a fresh process)."""
    kind = recipe.get("kind")
    if kind == "family":
        from .families import FAMILIES

        return FAMILIES[recipe["family"]](**recipe.get("params", {}))
    if kind == "script":
        return from_script(recipe["path"], recipe.get("function", "build"))
    if kind == "onnx":
        return from_onnx(recipe["path"], recipe.get("inputs") or {}, recipe.get("batch"), recipe.get("seed", 0))
    raise WorkloadError(f"unknown recipe {recipe!r}")


def parse_target(target: str) -> tuple[str, str]:
    """"my_model.py:build" -> ("my_model.py", "build"); "my_model.py" -> ("my_model.py", "build")."""
    path, sep, function = target.rpartition(":")
    if not sep or not path.endswith(".py"):
        return target, "build"
    return path, function or "build"


def feeds_of(workload: Workload) -> Sequence[dict]:
    return workload.batches if workload.mode == "stream" else [workload.feeds]
