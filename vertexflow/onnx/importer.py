"""Import ONNX models as vertexflow graphs, built for the values they are fed when they must be.

`load(path_or_model)` reads the file safely (`reading`), checks every node and
raises one UnsupportedOnnxError listing each node it cannot import (op type,
node name, and why), then builds the graph: graph inputs become inputs (a
symbolic dimension becomes None), float initializers params, and each node
one or a few vertices named after its outputs (`convert`). A node whose inputs
are all known when building (constants, integer initializers, shapes of
tensors of known shape) is folded: its value is computed once, with the same
ops, and becomes a constant.

Some values shape the graph: a Reshape's target, Slice bounds, the axes of a
reduction, the result of `Shape` on a tensor with a dynamic batch. When such
a value is a graph input, or comes from the sizes of one, the model is
*specialized*, as `jax.jit` does with static arguments: the graph is built at
the first run for the values (and, when they matter, the input sizes) fed,
and cached by them; another value builds and caches another graph. `load(...,
constants={...})` fixes such inputs at load time instead.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import FeedError, GraphError, ModelFileError, ShapeError, UnsupportedOnnxError
from ..graph import Graph, Node, Spec, format_shape
from .convert import CONVERTERS, Env, Inputs, NeedsValue, Unsupported, bounded, why_unsupported
from .patterns import fuse_gelu
from .reading import check_structure, initializer_value, node_attributes, onnx_modules, read_model

SPECIALIZATIONS_KEPT = 16  # graphs built for fed values, per model (least recently used dropped)


class _Source:
    """What a model's graphs are built from: the file's nodes, attributes and initializers."""

    def __init__(self, model, where: str, bound: dict[str, np.ndarray], optimize: bool = True,
                 max_constant_bytes: int = 2**30):
        onnx, numpy_helper = onnx_modules()
        self.where = where
        self.max_constant_bytes = max_constant_bytes
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        og = self.og = model.graph
        self.name = og.name or "onnx"
        self.initializers = {t.name: initializer_value(numpy_helper, t, where) for t in og.initializer}
        self.bound = bound
        self.nodes = list(og.node)
        if optimize:
            known = {**self.initializers, **bound}
            for node in self.nodes:
                if node.op_type == "Constant" and node.output:
                    with contextlib.suppress(Exception):  # a malformed constant is refused later, named
                        known[node.output[0]] = _constant_value(node_attributes(node))
            self.nodes = fuse_gelu(self.nodes, known, [vi.name for vi in og.output], onnx)
        self.attrs = [node_attributes(node) for node in self.nodes]
        self.declared: dict[str, Spec] = {}
        for vi in og.input:
            if vi.name in self.initializers or vi.name in bound or not vi.type.HasField("tensor_type"):
                continue
            t = vi.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            self.declared[vi.name] = Spec(shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        self.outputs = [vi.name for vi in og.output]
        self.producers = {out: node for node in self.nodes for out in node.output if out}
        self._output_types = {vi.name: vi.type for vi in og.output}

    def output_info(self, name: str) -> TensorInfo:
        """An output's shape and dtype as the file declares them."""
        onnx, _ = onnx_modules()
        kind = self._output_types.get(name)
        if kind is None or not kind.HasField("tensor_type"):
            return TensorInfo(name, None, None)
        t = kind.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim) \
            if t.HasField("shape") else None
        return TensorInfo(name, shape, dtype)


class TensorInfo:
    """A model input's or output's name, shape (None for a size that may vary) and dtype (None when
    the file does not say)."""

    __slots__ = ("name", "shape", "dtype")

    def __init__(self, name: str, shape: tuple | None, dtype):
        self.name, self.shape = name, None if shape is None else tuple(shape)
        self.dtype = None if dtype is None else np.dtype(dtype)

    @property
    def spec(self) -> Spec | None:
        return None if self.shape is None or self.dtype is None else Spec(self.shape, self.dtype)

    def __repr__(self) -> str:
        shape = "?" if self.shape is None else format_shape(self.shape)
        return f"TensorInfo({self.name!r}, {shape}, {self.dtype})"

    def __eq__(self, other) -> bool:
        return isinstance(other, TensorInfo) and (self.name, self.shape, self.dtype) == \
            (other.name, other.shape, other.dtype)

    def __hash__(self) -> int:
        return hash((self.name, self.shape, self.dtype))


# -- building -------------------------------------------------------------------------------------
class _Built:
    def __init__(self, graph: Graph, inputs: list[Node], outputs: list[Node]):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


def _build(src: _Source, values: Mapping[str, np.ndarray], shapes: Mapping[str, tuple] | None,
           defer: bool, refused: list | None = None) -> _Built | list[NeedsValue]:
    """The graph for these fixed input values (and input sizes, if given).

    With `defer`, a value known only at run time stops that branch and the needs are
    returned (the caller specializes); otherwise NeedsValue is raised. `refused` lists
    problems found before building, (op, name, why, node index): those nodes are
    skipped, and every problem is raised together.
    """
    g = Graph(src.name)
    env = Env(g, src.opset, src.max_constant_bytes)
    for name, value in src.initializers.items():
        env.known[name] = value
        if value.dtype.kind == "f":
            env.nodes[name] = g.param(g.fresh_name(name), value=value)
            env.trainable.add(name)
    env.known.update(src.bound)
    inputs = []
    for name, spec in src.declared.items():
        if name in values:
            env.known[name] = values[name]
            continue
        node = g.input(name, shape=shapes[name] if shapes is not None else spec.shape, dtype=spec.dtype)
        env.nodes[name] = node
        inputs.append(node)
    problems, needs = [p[:3] for p in refused or []], []
    blocked = {vi.name for vi in src.og.input if vi.name not in src.declared and vi.name not in src.initializers
               and vi.name not in src.bound}  # inputs that are not tensors
    skip = {p[3] for p in refused or []}
    for index, (node, attrs) in enumerate(zip(src.nodes, src.attrs)):
        outputs = [o for o in node.output if o]
        if index in skip:
            blocked.update(outputs)
            continue
        if node.op_type == "Constant":
            env.known[node.output[0]] = _constant_value(attrs)
            continue
        reads = [name for name in node.input if name]
        if node.op_type in ("If", "Loop", "Scan"):
            from .control import outer_names

            reads += outer_names(node)
        if any(name in blocked for name in reads):
            blocked.update(outputs)
            continue
        label = node.name or f"#{index}"
        try:
            if _foldable(env, node):
                results = _fold(src, env, node, attrs, label)
            else:
                results = CONVERTERS[node.op_type](env, node, Inputs(env, node), attrs)
        except NeedsValue as need:
            if not defer:
                raise
            needs.append(need)
            blocked.update(outputs)
            continue
        except Unsupported as exc:
            problems.append((node.op_type, label, str(exc)))
            blocked.update(outputs)
            continue
        except ModelFileError as exc:  # a converter's refusal of what the file asks (a constant too large)
            if str(exc).startswith(src.where):
                raise
            raise ModelFileError(f"{src.where}: {exc}") from None
        except ShapeError as exc:
            if not defer:  # building for feeds: the feeds do not fit the model
                raise ShapeError(f"{src.where}: {node.op_type} {label!r}: {exc}") from None
            problems.append((node.op_type, label, str(exc)))  # loading: vertexflow cannot build it
            blocked.update(outputs)
            continue
        if not isinstance(results, (list, tuple)):
            results = [results]
        for name, result in zip(node.output, results):
            if name and result is not None:
                env.keep(name, result)
    if problems:
        raise _unsupported(problems)
    if needs:
        return needs
    outputs = []
    for name in src.outputs:
        try:
            outputs.append(env.node(name))
        except Unsupported as exc:
            raise _unsupported([("output", name, f"{exc} (a model's outputs are tensors)")]) from None
    return _Built(g, inputs, outputs)


def _constant_value(attrs: dict) -> np.ndarray:
    if "value_float" in attrs or "value_floats" in attrs:
        return np.asarray(attrs.get("value_float", attrs.get("value_floats")), dtype=np.float32)
    if "value_int" in attrs or "value_ints" in attrs:
        return np.asarray(attrs.get("value_int", attrs.get("value_ints")), dtype=np.int64)
    return np.asarray(attrs["value"])


def _foldable(env: Env, node) -> bool:
    if node.op_type in ("If", "Loop", "Scan"):  # a body reads names of the enclosing graph: inlined there
        return False
    names = [n for n in node.input if n]
    # a sequence or optional may hold vertices: converted where they live, never folded apart
    return bool(names) and all(n in env.known and n not in env.trainable and isinstance(env.known[n], np.ndarray)
                               for n in names)


def _fold(src: _Source, env: Env, node, attrs: dict, label: str) -> list:
    """The node's outputs as values: built with its own converter in a scratch graph, evaluated now."""
    scratch = Env(Graph("fold"), env.opset, env.max_constant_bytes)
    scratch.known = {n: env.known[n] for n in node.input if n}
    results = CONVERTERS[node.op_type](scratch, node, Inputs(scratch, node), attrs)
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    values: dict[int, Any] = {}
    try:
        for vertex in scratch.graph.nodes:  # creation order is a topological order
            if vertex.kind == "const":
                values[vertex.id] = vertex.value
                continue
            spec = vertex.spec  # the shape inferred when it was built: refused before computed if too large
            if spec.static:
                bounded(env, node, math.prod(spec.shape), spec.dtype.itemsize,
                        f"folding it into a constant of shape {list(spec.shape)}")
            values[vertex.id] = vertex.op.forward(np, *(values[i.id] for i in vertex.inputs))
    except ModelFileError:
        raise
    except (ArithmeticError, IndexError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{src.where}: {node.op_type} {label!r} fails on its constant inputs: "
                             f"{type(exc).__name__}: {exc}") from None
    return [values[r.id] if isinstance(r, Node) else r for r in results]


def _unsupported(problems: list[tuple[str, str, str]]) -> UnsupportedOnnxError:
    listing = "; ".join(f"{op} {name!r}: {why}" for op, name, why in problems)
    return UnsupportedOnnxError(f"cannot import {len(problems)} node(s): {listing}", problems)


def _traced(src: _Source, need: NeedsValue) -> tuple[set[str], bool]:
    """The graph inputs whose values a build-time need comes from, and whether input sizes matter."""
    if need.shape:
        return set(), True
    inputs, sizes = set(), False
    stack, seen = [need.tensor], set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in src.declared:
            inputs.add(tensor)
            continue
        producer = src.producers.get(tensor)
        if producer is None:
            continue
        if producer.op_type in ("Shape", "Size"):
            sizes = True
            continue
        stack.extend(n for n in producer.input if n)
        if producer.op_type in ("If", "Loop", "Scan"):  # and what its bodies read from the graph
            from .control import outer_names

            stack.extend(outer_names(producer))
    return inputs, sizes


# -- the model ------------------------------------------------------------------------------------
class OnnxModel:
    """A loaded model: its inputs and outputs in the file's order, and a way to run it.

    A model whose graph does not depend on what it is fed has one `graph` (`static`).
    Otherwise `run` builds the graph for each new set of structural values and input
    sizes and caches it; `specialize(feeds)` gives that graph as a static model.
    """

    def __init__(self, src: _Source, built: _Built | None, fixed: Mapping[str, np.ndarray] | None = None,
                 value_inputs: Iterable[str] = (), by_shape: bool = False, why: str = ""):
        self._src = src
        self._built = built
        self._fixed = dict(fixed or {})
        self._executors: dict = {}
        self._specialized: OrderedDict = OrderedDict()
        self.value_inputs = sorted(value_inputs)
        self._by_shape = by_shape
        self._why = why

    # -- what the model is ------------------------------------------------------------------
    @property
    def opset(self) -> int:
        return self._src.opset

    @property
    def static(self) -> bool:
        """True when one graph serves every feed (the graph does not depend on fed values or sizes)."""
        return self._built is not None

    @property
    def input_specs(self) -> dict[str, Spec]:
        """Each input fed at run time, by name: the shape and dtype the file declares."""
        return {k: v for k, v in self._src.declared.items() if k not in self._fixed}

    @property
    def output_names(self) -> list[str]:
        return list(self._src.outputs)

    def _static_part(self, what: str) -> _Built:
        if self._built is None:
            raise GraphError(f"{self._src.where}: this model's graph depends on what it is fed ({self._why}), "
                             f"so it has no single {what}: model.specialize(feeds) gives the graph for those feeds "
                             "(model.run builds and caches it by itself)")
        return self._built

    @property
    def graph(self) -> Graph:
        return self._static_part("graph").graph

    @property
    def inputs(self) -> list:
        """What to feed, in the file's order: each with `.name`, `.shape` (None where a size may vary)
        and `.dtype`, as onnxruntime's `get_inputs()` says. For a static model these are the graph's
        input vertices (feed them or their names); for a model built per feed, descriptions."""
        if self._built is not None:
            return self._built.inputs
        return [TensorInfo(name, spec.shape, spec.dtype) for name, spec in self.input_specs.items()]

    @property
    def outputs(self) -> list:
        """What a run returns, in order: the graph's output vertices for a static model, else each
        output's name, shape and dtype as the file declares them (None where it does not say)."""
        if self._built is not None:
            return self._built.outputs
        return [self._src.output_info(name) for name in self._src.outputs]

    def __repr__(self) -> str:
        kind = f"{len(self.graph)} vertices" if self.static else f"specialized per feed ({self._why})"
        return f"<OnnxModel {self._src.where!r}: opset {self.opset}, {kind}>"

    # -- specializing -----------------------------------------------------------------------
    def _named(self, feeds: Mapping) -> dict[str, Any]:
        if not isinstance(feeds, Mapping):
            raise FeedError(f"feeds must be a mapping of input names to arrays, got {type(feeds).__name__}")
        named = {}
        for key, value in feeds.items():
            name = key.name if isinstance(key, (Node, TensorInfo)) else key
            if name in named:
                raise FeedError(f"input {name!r} is fed twice; feed it once")
            named[name] = value
        return named

    def specialize(self, feeds: Mapping) -> OnnxModel:
        """The model built for these feeds (itself when it is static), made once per key and cached.

        Raises:
            FeedError: a feed for no input, a missing feed, or sizes or a dtype the file does not allow.
            UnsupportedOnnxError: a value the graph's structure needs is computed from data at run time.
        """
        if self._built is not None:
            return self
        named = self._named(feeds)
        declared = self._src.declared
        unknown = [k for k in named if k not in declared]
        if unknown:
            raise FeedError(f"{self._src.where} has no input {unknown[0]!r}; its inputs: "
                            + ", ".join(f"{k} {v}" for k, v in declared.items()))
        missing = [k for k in declared if k not in named]
        if missing:
            raise FeedError(f"missing feeds for {', '.join(map(repr, missing))}; the model's inputs: "
                            + ", ".join(f"{k} {v}" for k, v in declared.items()))
        arrays = {k: self._checked(k, named[k]) for k in declared}
        while True:
            key = self._key(arrays)
            child = self._specialized.get(key)
            if child is not None:
                self._specialized.move_to_end(key)
                return child
            values = {k: arrays[k] for k in self.value_inputs}
            shapes = {k: a.shape for k, a in arrays.items()} if self._by_shape else None
            try:
                built = _build(self._src, values, shapes, defer=False)
            except NeedsValue as need:
                inputs, sizes = _traced(self._src, need)
                if not (inputs - set(self.value_inputs)) and not (sizes and not self._by_shape):
                    raise UnsupportedOnnxError(
                        f"{self._src.where}: {need.what} is computed from the data at run time ({need.tensor!r}); "
                        "vertexflow needs it when the graph is built",
                        [("?", need.tensor, f"{need.what} computed at run time")]) from None
                self.value_inputs = sorted(set(self.value_inputs) | inputs)
                self._by_shape = self._by_shape or sizes
                continue
            child = OnnxModel(self._src, built, fixed=values)
            self._specialized[key] = child
            if len(self._specialized) > SPECIALIZATIONS_KEPT:
                _, dropped = self._specialized.popitem(last=False)
                dropped.close()
            return child

    def _checked(self, name: str, value: Any) -> np.ndarray:
        spec = self._src.declared[name]
        array = np.asarray(value)
        if array.dtype != spec.dtype:
            if not np.can_cast(array.dtype, spec.dtype, "safe"):
                raise FeedError(f"feed for {name!r} has dtype {array.dtype}, but the input is {spec.dtype}; "
                                f"convert it with .astype({str(spec.dtype)!r})")
            array = array.astype(spec.dtype)
        if not spec.matches(array.shape):
            raise FeedError(f"feed for {name!r} has shape {format_shape(array.shape)}, but the input is "
                            f"{format_shape(spec.shape)}")
        return array

    def _key(self, arrays: Mapping[str, np.ndarray]) -> tuple:
        values = tuple((k, arrays[k].dtype.str, arrays[k].shape, arrays[k].tobytes()) for k in self.value_inputs)
        sizes = tuple((k, arrays[k].shape) for k in sorted(arrays)) if self._by_shape else ()
        return values + sizes

    # -- running ----------------------------------------------------------------------------
    def executor(self, kind: str = "sequential", **options):
        """The model's executor of this kind and options, made once and kept (static models)."""
        from ..factory import make_executor

        built = self._static_part("executor")
        key = (kind, tuple(sorted(options.items())))
        if key not in self._executors:
            self._executors[key] = make_executor(built.graph, kind, **options)
        return self._executors[key]

    def _runtime_feeds(self, feeds: Mapping) -> dict[str, Any]:
        named = self._named(feeds)
        for name, fixed in self._fixed.items():
            if name in named:
                given = np.asarray(named.pop(name))
                if given.shape != fixed.shape or not np.array_equal(given, fixed):
                    raise FeedError(f"input {name!r} was fixed when this graph was built for it; feed the "
                                    "model it came from (model.run) to build the graph for another value")
        return named

    def run(self, feeds: Mapping, executor: str = "sequential", **options) -> list[np.ndarray]:
        """The outputs, in the file's order, for feeds keyed by input name (or input vertex)."""
        model = self.specialize(feeds)
        return model.executor(executor, **options).run(model._runtime_feeds(feeds), model.outputs)

    def run_stream(self, batches: Iterable[Mapping], executor: str = "actor", depth: int = 2,
                   **options) -> Iterator[list[np.ndarray]]:
        """Outputs for each feed dict of `batches`, in order, up to `depth` steps in flight.

        Consecutive batches that share a specialization stream through one executor;
        a batch that needs another graph (a last, smaller batch) starts a new stream.
        """
        group: list = []
        current = None
        for feeds in batches:
            model = self.specialize(feeds)
            if current is not None and model is not current:
                yield from current._stream(group, executor, depth, options)
                group = []
            current = model
            group.append(feeds)
        if group:
            yield from current._stream(group, executor, depth, options)

    def _stream(self, group: list, kind: str, depth: int, options: dict) -> Iterator[list[np.ndarray]]:
        ex = self.executor(kind, **options)
        feeds = (self._runtime_feeds(f) for f in group)
        if hasattr(ex, "run_stream"):
            for out in ex.run_stream(feeds, self.outputs, depth=depth):
                yield list(out)
        else:
            for f in feeds:
                yield list(ex.run(f, self.outputs))

    def close(self) -> None:
        for ex in self._executors.values():
            ex.close()
        self._executors.clear()
        for child in self._specialized.values():
            child.close()
        self._specialized.clear()

    def __enter__(self) -> OnnxModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- loading --------------------------------------------------------------------------------------
def load(model_or_path: Any, constants: Mapping[str, Any] | None = None, *, optimize: bool = True,
         max_constant_bytes: int = 2**30) -> OnnxModel:
    """Import an ONNX model (a path, bytes or a ModelProto) as a vertexflow graph.

    Args:
        optimize: import the node patterns of `onnx/patterns.py` (the five nodes of an exported
            GELU) as one vertex each; False imports every node as it is.
        max_constant_bytes: the most a value computed while building may take (a folded
            constant, a ConstantOfShape, a Range): a tiny file could otherwise ask for terabytes.
            A larger one is refused, naming its node, before it is allocated.
        constants: values for graph inputs to fix at load time (a shape or axes an op
            needs to build); without them such inputs are fed at run time and the graph
            is built for the values fed (see the module's docstring).

    External data is read only for a model given by path, only from regular files inside
    that model's folder.

    Raises:
        UnsupportedOnnxError: listing every node (op type, name, reason) that cannot be imported.
        ModelFileError: not an ONNX model (naming the file), a dangling or cyclic name (naming
            the node and the value), an unreadable initializer, or external data it may not read.
    """
    onnx, _ = onnx_modules()
    model, where = read_model(onnx, model_or_path)
    check_structure(model.graph, where)
    bound = {k: np.asarray(v) for k, v in (constants or {}).items()}
    declared_names = {vi.name for vi in model.graph.input}
    stray = [k for k in bound if k not in declared_names]
    if stray:
        raise FeedError(f"{where}: constants= names {', '.join(map(repr, stray))}, which are not inputs of the "
                        f"model (its inputs: {', '.join(sorted(declared_names))})")
    if isinstance(max_constant_bytes, bool) or not isinstance(max_constant_bytes, int) or max_constant_bytes < 0:
        raise ValueError(f"max_constant_bytes= takes a number of bytes >= 0, got {max_constant_bytes!r}")
    src = _Source(model, where, bound, optimize, max_constant_bytes)
    problems = []
    for vi in model.graph.input:
        if not vi.type.HasField("tensor_type"):
            problems.append(("input", vi.name, "only tensor inputs are supported (not sequences or optionals)", -1))
    known = {**src.initializers, **bound}
    for index, (node, attrs) in enumerate(zip(src.nodes, src.attrs)):
        label = node.name or f"#{index}"
        if node.op_type == "Constant":
            if not ({"value", "value_float", "value_floats", "value_int", "value_ints"} & set(attrs)):
                problems.append((node.op_type, label, "only value constants are supported", index))
            else:
                known[node.output[0]] = _constant_value(attrs)
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append((node.op_type, label, f"domain {node.domain!r} not supported", index))
            continue
        why = why_unsupported(node, attrs, known)
        if why:
            problems.append((node.op_type, label, why, index))
    built = _build(src, {}, None, defer=True, refused=problems)
    if isinstance(built, _Built):
        return OnnxModel(src, built)
    inputs, sizes = set(), False
    for need in built:
        more, by_shape = _traced(src, need)
        inputs |= more
        sizes = sizes or by_shape
    reasons = []
    if inputs:
        reasons.append("the values of " + ", ".join(map(repr, sorted(inputs))))
    if sizes or not inputs:
        reasons.append("the sizes of its inputs")
    return OnnxModel(src, None, value_inputs=inputs, by_shape=sizes or not inputs, why=" and ".join(reasons))


def build_time_inputs(model: Any) -> list[str]:
    """Graph inputs whose values the graph's structure depends on (built for them at run time)."""
    return load(model).value_inputs
