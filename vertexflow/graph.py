"""Graphs of vertices: inputs, params, constants and op applications.

A `Graph` owns its vertices (`Node` objects) and mirrors them in a networkx
MultiDiGraph (`g.nx`), one edge per argument, keyed and labelled by the
argument's position. Vertices are only ever added after their inputs, so the
order of creation is a topological order; executors rely on it.

Building a vertex infers its `Spec` (shape and dtype) at once, so a mismatch
raises `ShapeError` at the line of user code that built it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from .errors import GraphError, ShapeError

Shape = tuple[int | None, ...]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def as_dtype(dtype: Any) -> np.dtype:
    """Normalise a dtype given as a string, numpy type or dtype."""
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        hint = ""
        if isinstance(dtype, str):
            names = sorted({np.dtype(t).name for t in np.sctypeDict.values() if np.dtype(t).kind in "biufc"})
            close = difflib.get_close_matches(dtype.lower(), names, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else " (e.g. 'float32', 'int64', 'bool')"
        raise ShapeError(f"not a dtype: {dtype!r}{hint}") from exc


@functools.lru_cache(maxsize=1024)
def _signature_problem(cls: type, inputs: int) -> str | None:
    """Why a user's op class cannot take `inputs` inputs: its infer(*specs) and forward(xp, *values)."""
    for method, extra in (("infer", 0), ("forward", 1)):
        function = getattr(cls, method, None)
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            continue
        bound = not isinstance(inspect.getattr_static(cls, method, None), staticmethod)
        params = list(signature.parameters.values())[1 if bound else 0:]  # after self
        try:
            inspect.Signature(params).bind(*([None] * (extra + inputs)))
        except TypeError:
            args = ("xp, " if extra else "") + ", ".join(f"x{i}" for i in range(inputs))
            return (f"its {method}{signature} cannot take the {inputs} input(s) it is called with "
                    f"({method}(self, {args}){'; xp is the array module' if extra else ''})")
    return None


def _check_signatures(op, inputs: int, vertex: str) -> None:
    cls = type(op)
    if cls.__module__.startswith("vertexflow."):  # ours are tested
        return
    problem = _signature_problem(cls, inputs)
    if problem is not None:
        raise GraphError(f"op {op.name!r} (vertex {vertex!r}, class {cls.__qualname__}): {problem}")


def format_shape(shape: Shape) -> str:
    """(None, 784) rather than Python's (None, 784); () for scalars."""
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


@dataclass(frozen=True)
class Spec:
    """The static description of a value: its shape (None for a size given at run time) and dtype."""

    shape: Shape
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        object.__setattr__(self, "dtype", as_dtype(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def static(self) -> bool:
        """True when every dimension is known."""
        return None not in self.shape

    def matches(self, shape: tuple[int, ...]) -> bool:
        """Whether a concrete shape fits this spec (None matches any size)."""
        return len(shape) == len(self.shape) and all(
            d is None or d == s for d, s in zip(self.shape, shape)
        )

    def __str__(self) -> str:
        return f"{format_shape(self.shape)} {self.dtype}"

    @classmethod
    def of(cls, array: Any) -> Spec:
        """The spec of a concrete array."""
        return cls(tuple(array.shape), array.dtype)


def _user_frame() -> str:
    """file:line of the first caller outside vertexflow, where a vertex is built."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"{os.path.basename(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class Node:
    """A vertex of a graph: an input, a param, a constant, or an op applied to other vertices.

    Once `vertexflow.ops` is imported (as `import vertexflow` does), nodes
    support the arithmetic operators (`+ - * / @ **`, unary minus,
    comparisons), indexing, `.T` and `sum`/`mean`/`max`/`reshape`/`astype`,
    each of which adds a vertex to the graph. A node has no truth value: `==`
    builds a vertex rather than comparing.

    Attributes:
        graph: the Graph this vertex belongs to.
        name: unique, readable name within the graph.
        kind: "input", "param", "const" or "op".
        op: the Op for kind "op", else None.
        inputs: the argument vertices, in order.
        spec: inferred Spec (shape and dtype).
        role: "grad" for vertices built by differentiation, else None.
        origin: "file:line" of the user code that built it.
    """

    __slots__ = ("graph", "name", "_kind", "_op", "_inputs", "spec", "role", "origin", "id", "_value")

    # numpy must defer to our operators in `array * node`.
    __array_ufunc__ = None

    def __init__(self, graph, name, kind, spec, op=None, inputs=(), role=None, value=None):
        self.graph = graph
        self.name = name
        self._kind = kind
        self.spec = spec
        self._op = op
        self._inputs = tuple(inputs)
        self.role = role
        self.origin = _user_frame()
        self.id = graph._take_id()
        self._value = value

    # -- structure: fixed once built (executors cache plans of it) ---------
    @property
    def inputs(self) -> tuple[Node, ...]:
        return self._inputs

    @inputs.setter
    def inputs(self, value) -> None:
        raise AttributeError(f"vertex {self.name!r}: inputs are fixed once a vertex is built; build a new vertex "
                             "(op(*new_inputs)) instead")

    @property
    def op(self):
        return self._op

    @op.setter
    def op(self, value) -> None:
        raise AttributeError(f"vertex {self.name!r}: its op is fixed once it is built; build a new vertex instead")

    @property
    def kind(self) -> str:
        return self._kind

    @kind.setter
    def kind(self, value) -> None:
        raise AttributeError(f"vertex {self.name!r}: its kind is fixed once it is built")

    # -- description -----------------------------------------------------
    @property
    def shape(self) -> Shape:
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype:
        return self.spec.dtype

    @property
    def ndim(self) -> int:
        return self.spec.ndim

    @property
    def op_name(self) -> str:
        return self.op.name if self.op is not None else self.kind

    def __repr__(self) -> str:
        return f"<Node {self.name!r} {self.op_name} {self.spec}>"

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError(
            f"vertex {self.name!r} has no truth value: comparisons on vertices build "
            "new vertices; compare node names or use `is` instead"
        )

    def __iter__(self) -> Iterator:
        raise TypeError(f"vertex {self.name!r} is not iterable; index it (node[i]) instead")

    # -- values of params and constants ----------------------------------
    @property
    def value(self) -> np.ndarray:
        """The current array of a param or constant."""
        if self.kind not in ("param", "const"):
            raise GraphError(f"{self.kind} {self.name!r} has no stored value; only params and constants do")
        return self._value

    @value.setter
    def value(self, new: Any) -> None:
        if self.kind != "param":
            raise GraphError(f"cannot assign the value of {self.kind} {self.name!r}; only params take new values")
        self._value = self.graph._checked_param_value(self.name, self.spec, new)

    # The arithmetic operators, indexing, `.T` and the reduction methods are attached
    # by `vertexflow.ops` (ops/operators.py), as JAX attaches array methods to its
    # Tracer: this module knows nothing of the op library.


_unnamed = itertools.count(1)


def _checked_shape(what: str, shape: Sequence[int | None]) -> tuple:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"{what}: shape must be a tuple of sizes, got {shape!r}") from None
    for d in dims:
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0):
            raise ShapeError(f"{what}: dimension {d!r} in shape {dims!r} is not a size; use an int >= 0, or None "
                             "for a size the feed gives")
    return tuple(None if d is None else int(d) for d in dims)


class Graph:
    """A dataflow graph of vertices.

    Build it with `input`, `param`, `const` and op calls on its nodes; run it
    with an executor. `g.nx` is the networkx view: one edge per argument,
    carrying the argument position as `argpos`.
    """

    def __init__(self, name: str | None = None):
        # Unnamed graphs get distinct names, so an error about two graphs can tell them apart.
        self.name = f"graph_{next(_unnamed)}" if name is None else name
        self.nx = nx.MultiDiGraph(name=name)
        self._nodes: dict[str, Node] = {}
        self._counters: dict[str, itertools.count] = defaultdict(lambda: itertools.count(1))
        self._next_id = 0
        self._scalar_consts: dict[tuple, Node] = {}

    # -- lookup ------------------------------------------------------------
    def __contains__(self, item: Node | str) -> bool:
        if isinstance(item, Node):
            return item.graph is self and self._nodes.get(item.name) is item
        return item in self._nodes

    def __getitem__(self, name: str) -> Node:
        return self.node(name)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self)} vertices>"

    def node(self, name: str) -> Node:
        """The vertex called `name`; GraphError naming close matches if there is none."""
        try:
            return self._nodes[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._nodes, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise GraphError(f"graph {self.name!r} has no vertex named {name!r}{hint}") from None

    def resolve(self, item: Node | str) -> Node:
        """A node of this graph from a Node or a name; GraphError for another graph's node."""
        if isinstance(item, Node):
            if item.graph is not self:
                raise GraphError(
                    f"vertex {item.name!r} belongs to graph {item.graph.name!r}, not to {self.name!r}"
                )
            return item
        if isinstance(item, str):
            return self.node(item)
        raise GraphError(f"expected a vertex or a vertex name, got {type(item).__name__}")

    @property
    def nodes(self) -> list[Node]:
        """All vertices in order of creation (a topological order)."""
        return list(self._nodes.values())

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self._nodes.values() if n.kind == "input"]

    @property
    def params(self) -> list[Node]:
        return [n for n in self._nodes.values() if n.kind == "param"]

    @property
    def outputs(self) -> list[Node]:
        """Vertices that no other vertex consumes."""
        return [n for n in self._nodes.values() if n.kind == "op" and self.nx.out_degree(n.name) == 0]

    def consumers(self, node: Node) -> list[Node]:
        """The vertices that take `node` as an argument, in order of creation."""
        names = {v for _, v in self.nx.out_edges(node.name)}
        return sorted((self._nodes[v] for v in names), key=lambda n: n.id)

    # -- building ----------------------------------------------------------
    def unique_name(self, name: str | None, base: str) -> str:
        """`name` if it is free (GraphError if it is taken or not a string), else a new `base_N`."""
        if name is not None:
            if not isinstance(name, str) or not name:
                raise GraphError(f"a vertex name must be a non-empty string, got {name!r}")
            if name in self._nodes:
                raise GraphError(f"graph {self.name!r} already has a vertex named {name!r}")
            return name
        while True:
            candidate = f"{base}_{next(self._counters[base])}"
            if candidate not in self._nodes:
                return candidate

    def fresh_name(self, base: str) -> str:
        """`base` if no vertex has that name yet, else `base_2`, `base_3`, ..."""
        if base not in self._nodes:
            return base
        k = 2
        while f"{base}_{k}" in self._nodes:
            k += 1
        return f"{base}_{k}"

    def _add(self, node: Node) -> Node:
        self._nodes[node.name] = node
        self.nx.add_node(node.name, kind=node.kind, op=node.op_name, role=node.role, node=node)
        for pos, src in enumerate(node.inputs):
            self.nx.add_edge(src.name, node.name, key=pos, argpos=pos)
        return node

    def add_vertex(self, op, inputs: Sequence[Node], name: str | None = None, role: str | None = None) -> Node:
        """Add a vertex applying `op` to `inputs` (vertices of this graph), its Spec inferred now.

        This is what calling an op does; `vf.ops.Op.__call__` first turns scalars
        and arrays into constants.

        Raises:
            ShapeError: the op's shape rule refuses the inputs (naming the op and the vertex).
            GraphError: an input belongs to another graph, or `name` is taken.
        """
        for node in inputs:
            if node.graph is not self:
                raise GraphError(f"{op.name}: vertex {node.name!r} belongs to graph {node.graph.name!r}, not to {self.name!r}")
        vertex_name = self.unique_name(name, op.name)
        _check_signatures(op, len(inputs), vertex_name)
        try:
            spec = op.infer(*(n.spec for n in inputs))
        except ShapeError as exc:
            raise ShapeError(f"{op.name} {vertex_name!r}: {exc}") from None
        if not isinstance(spec, Spec):
            raise GraphError(f"op {op.name!r}: infer() must return a vf.Spec, got {type(spec).__name__}")
        return self._add(Node(self, vertex_name, "op", spec, op=op, inputs=inputs, role=role))

    def mark(self) -> int:
        """A mark of how far the graph has been built; `prune(since=mark, ...)` works on what came after."""
        return self._next_id

    def prune(self, since: int, keep: Sequence[Node]) -> None:
        """Remove the vertices built after mark `since` that none of `keep` depends on.

        Used by `vf.grad`, whose derivative rules build some vertices eagerly.
        """
        needed = {n.id for n in ancestors(keep)}
        for node in reversed(list(self._nodes.values())):
            if node.id < since:
                break
            if node.id not in needed:
                self._remove(node)

    def _remove(self, node: Node) -> None:
        if self.nx.out_degree(node.name):
            raise GraphError(f"vertex {node.name!r} still has consumers")
        self.nx.remove_node(node.name)
        del self._nodes[node.name]
        for key, const in list(self._scalar_consts.items()):
            if const is node:
                del self._scalar_consts[key]

    def _take_id(self) -> int:
        ident = self._next_id
        self._next_id += 1
        return ident

    def input(self, name: str, shape: Sequence[int | None] = (), dtype: Any = "float32") -> Node:
        """A value fed at run time; None in `shape` is a size given by the feed.

        Raises:
            ShapeError: a dimension that is not None or an int >= 0.
        """
        spec = Spec(_checked_shape(f"input {name!r}", shape), as_dtype(dtype))
        return self._add(Node(self, self.unique_name(name, "input"), "input", spec))

    def param(
        self,
        name: str,
        shape: Sequence[int] | None = None,
        init: Callable | None = None,
        value: Any = None,
        dtype: Any = None,
    ) -> Node:
        """A trainable value, from `value` or from `init(shape, dtype)`.

        The dtype defaults to the value's own, or float32 for an initializer.

        Raises:
            GraphError: neither or both of init and value are given.
            ShapeError: the value does not have the declared shape.
        """
        if (init is None) == (value is None):
            raise GraphError(f"param {name!r}: give exactly one of init= or value=")
        if value is not None:
            array = np.asarray(value)
            dtype = array.dtype if dtype is None else dtype
            shape = array.shape if shape is None else tuple(shape)
        else:
            if shape is None:
                raise GraphError(f"param {name!r}: init= needs a shape")
            dtype = "float32" if dtype is None else dtype
            if any(d is None for d in shape):
                raise ShapeError(f"param {name!r}: every dimension of a param must be known, got {format_shape(tuple(shape))}")
            shape = _checked_shape(f"param {name!r}", shape)
            array = np.asarray(init(tuple(shape), as_dtype(dtype)))
        spec = Spec(tuple(shape), as_dtype(dtype))
        checked = self._checked_param_value(name, spec, array)
        return self._add(Node(self, self.unique_name(name, "param"), "param", spec, value=checked))

    def const(self, value: Any, name: str | None = None, dtype: Any = None) -> Node:
        """A constant vertex holding `value` (a copy, read-only)."""
        array = np.array(value, dtype=None if dtype is None else as_dtype(dtype))
        array.flags.writeable = False
        spec = Spec(array.shape, array.dtype)
        return self._add(Node(self, self.unique_name(name, "const"), "const", spec, value=array))

    def scalar(self, value: int | float | bool, dtype: np.dtype) -> Node:
        """A shared constant for a Python scalar used in an expression (`x * 2`)."""
        key = (type(value), value, np.dtype(dtype).str)
        node = self._scalar_consts.get(key)
        if node is None:
            node = self.const(value, dtype=dtype)
            self._scalar_consts[key] = node
        return node

    def _checked_param_value(self, name: str, spec: Spec, new: Any) -> np.ndarray:
        array = np.asarray(new)
        if array.shape != spec.shape:
            raise ShapeError(
                f"param {name!r}: value of shape {format_shape(array.shape)} does not fit "
                f"its shape {format_shape(spec.shape)}"
            )
        if array.dtype != spec.dtype:
            if not np.can_cast(array.dtype, spec.dtype, "same_kind"):
                raise ShapeError(f"param {name!r}: value of dtype {array.dtype} cannot become {spec.dtype}")
            array = array.astype(spec.dtype)
        return array

    # -- pictures ----------------------------------------------------------
    def to_dot(self, highlight: dict[str, str] | None = None) -> str:
        """Graphviz text of the graph.

        Inputs are blue boxes, params green, constants grey, outputs doubled,
        gradient vertices dashed red; edges of multi-argument ops carry the
        argument position.

        Args:
            highlight: optional {vertex name: fill colour} to colour vertices (e.g. by time).
        """

        def quote(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

        outputs = {n.name for n in self.outputs}
        lines = [f"digraph {quote(self.name)} {{", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
        for node in self._nodes.values():
            label = f"{node.name}\n{node.op_name} {format_shape(node.shape)}"
            attrs = {"label": label}
            if node.kind == "input":
                attrs.update(shape="box", style="filled", fillcolor="#cfe2ff")
            elif node.kind == "param":
                attrs.update(shape="box", style="filled,rounded", fillcolor="#d1f2d1")
            elif node.kind == "const":
                attrs.update(shape="note", style="filled", fillcolor="#eeeeee")
            else:
                attrs.update(shape="ellipse")
            if node.role == "grad":
                attrs.update(style="dashed", color="#c0392b", fontcolor="#c0392b")
            if node.name in outputs:
                attrs["peripheries"] = "2"
            if highlight and node.name in highlight:
                attrs["style"] = (attrs.get("style", "") + ",filled").lstrip(",")
                attrs["fillcolor"] = highlight[node.name]
            body = ", ".join(f"{k}={quote(v)}" for k, v in attrs.items())
            lines.append(f"  {quote(node.name)} [{body}];")
        for node in self._nodes.values():
            many = len(node.inputs) > 1
            for pos, src in enumerate(node.inputs):
                label = f" [label={quote(str(pos))}]" if many else ""
                lines.append(f"  {quote(src.name)} -> {quote(node.name)}{label};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def ancestors(targets: Sequence[Node]) -> list[Node]:
    """Every vertex the targets depend on (themselves included), in topological order."""
    seen: dict[int, Node] = {}
    stack = list(targets)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen[node.id] = node
        stack.extend(node.inputs)
    return [seen[i] for i in sorted(seen)]
