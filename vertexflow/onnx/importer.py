"""Import ONNX models as vertexflow graphs.

`load(path_or_model)` checks every node first and raises one
UnsupportedOnnxError listing each node it cannot import (op type, node name,
and why), before building anything. Then it walks the nodes in file order:
graph inputs become inputs (a symbolic dimension becomes None),
initializers become params, `Constant` nodes constants, and each node one or
a few vertices named after its outputs. Values that an op needs at build time
(a Reshape's shape, Squeeze axes, Gather indices, Clip bounds, ...) must be
constants (initializers or Constant nodes) of the file.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ops
from ..errors import ModelFileError, UnsupportedOnnxError
from ..graph import Graph, Node


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ImportError("ONNX import needs the onnx package: pip install onnx (or, in a checkout, pip install -e '.[onnx]')") from exc
    return onnx, numpy_helper


@dataclass
class OnnxModel:
    """A loaded model: its graph, its inputs and outputs in the file's order, and a way to run it."""

    graph: Graph
    inputs: list[Node]
    outputs: list[Node]
    opset: int
    _executors: dict = field(default_factory=dict, repr=False)

    def executor(self, kind: str = "sequential", **options):
        """The model's executor of this kind and options, made once and kept."""
        from ..executor import make_executor

        key = (kind, tuple(sorted(options.items())))
        if key not in self._executors:
            self._executors[key] = make_executor(self.graph, kind, **options)
        return self._executors[key]

    def run(self, feeds: dict, executor: str = "sequential", **options) -> list[np.ndarray]:
        """The outputs, in the file's order, for feeds keyed by input name (or node)."""
        return self.executor(executor, **options).run(feeds, self.outputs)

    def close(self) -> None:
        for ex in self._executors.values():
            ex.close()
        self._executors.clear()


# -- attributes and constants ------------------------------------------------------------
def _attrs(node) -> dict[str, Any]:
    onnx, numpy_helper = _onnx()
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif a.type == onnx.AttributeProto.TENSOR:
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


class _Env:
    """Tensor name -> vertex, plus the numpy value of tensors known at build time."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: dict[str, Node] = {}
        self.consts: dict[str, np.ndarray] = {}

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            self.nodes[name] = self.graph.const(self.consts[name], name=_safe(self.graph, name))
        return self.nodes[name]

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise UnsupportedOnnxError(f"{what} must be a constant of the file, but {name!r} is computed",
                                       [("?", name, f"{what} not constant")])
        return self.consts[name]


def _safe(graph: Graph, name: str) -> str:
    return graph.fresh_name(name)


# -- support: which ops and attributes ----------------------------------------------------
def _why_unsupported(node, attrs: dict, opset: int, consts: set[str], values: dict) -> str | None:
    op = node.op_type
    if op not in CONVERTERS:
        return "op not supported"
    allowed = ALLOWED_ATTRS.get(op, set())
    for k, v in attrs.items():
        if k not in allowed:
            return f"attribute {k}={v!r} not supported"
    if op in ("Conv", "MaxPool", "AveragePool"):
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"auto_pad={attrs['auto_pad']} not supported"
        pads = attrs.get("pads", [0] * 4)
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            return f"pads={pads}: only 2-D, symmetric padding is supported"
        kernel = attrs.get("kernel_shape")
        if kernel is not None and len(kernel) != 2:
            return "only 2-D kernels are supported"
    if op == "Conv" and attrs.get("group", 1) != 1:
        return f"group={attrs['group']} not supported"
    if op in ("MaxPool", "AveragePool") and attrs.get("ceil_mode", 0):
        return "ceil_mode=1 not supported"
    if op == "MaxPool" and (any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("storage_order", 0)):
        return "dilations or storage_order not supported"
    if op == "MaxPool" and len(node.output) > 1:
        return "the Indices output is not supported"
    if op == "AveragePool" and any(attrs.get("pads", [0])) and not attrs.get("count_include_pad", 0):
        return "padding without count_include_pad=1 not supported"
    if op == "BatchNormalization" and (attrs.get("training_mode", 0) or len(node.output) > 1):
        return "training mode not supported"
    for pos in BUILD_TIME_INPUTS.get(op, []):
        if pos < len(node.input) and node.input[pos] and node.input[pos] not in consts:
            return (f"input {pos} ({node.input[pos]!r}) must be a constant of the file "
                    "(or bound with load(..., constants={...}))")
    if op == "Gelu" and attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"approximate={attrs['approximate']!r} not supported (none or tanh)"
    if op == "Reshape" and attrs.get("allowzero", 0):
        return "allowzero=1 not supported"
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode = values.get(node.input[2])
        if mode is None or bool(np.asarray(mode)):
            return "training mode (random masks) not supported"
    return None


ALLOWED_ATTRS = {
    "LeakyRelu": {"alpha"}, "Gelu": {"approximate"}, "Softmax": {"axis"}, "LogSoftmax": {"axis"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "MaxPool": {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"},
    "AveragePool": {"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode"},
    "Flatten": {"axis"}, "Reshape": {"allowzero"}, "Transpose": {"perm"}, "Concat": {"axis"},
    "Squeeze": {"axes"}, "Unsqueeze": {"axes"}, "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints"},
    "Dropout": {"ratio", "seed"}, "Clip": {"min", "max"},
    "ReduceSum": {"keepdims", "noop_with_empty_axes"}, "ReduceMean": {"axes", "keepdims", "noop_with_empty_axes"},
    "ReduceMax": {"axes", "keepdims", "noop_with_empty_axes"}, "Gather": {"axis"},
}


# -- reading the file safely -----------------------------------------------------------------------
def _read_model(onnx, model_or_path) -> tuple[Any, str]:
    """The ModelProto, and how to name it in errors; external data only beside a model given by path.

    Raises:
        ModelFileError: not a regular file, not an ONNX model, or external data it may not read.
    """
    import os

    from google.protobuf.message import DecodeError

    if isinstance(model_or_path, os.PathLike):
        model_or_path = os.fspath(model_or_path)
    if isinstance(model_or_path, str):
        where = model_or_path
        if not os.path.exists(where):
            raise ModelFileError(f"{where}: no such file")
        if not stat.S_ISREG(os.stat(where).st_mode):
            raise ModelFileError(f"{where}: not a regular file")
        try:
            model = onnx.load(where, load_external_data=False)
        except (DecodeError, ValueError, OSError) as exc:
            raise ModelFileError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
        _load_external_data(onnx, model, os.path.dirname(os.path.abspath(where)), where)
    elif isinstance(model_or_path, (bytes, bytearray, memoryview)):
        where = "the model bytes"
        try:
            model = onnx.load_from_string(bytes(model_or_path))
        except (DecodeError, ValueError) as exc:
            raise ModelFileError(f"{where}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
        _refuse_external_data(model, where)
    elif isinstance(model_or_path, onnx.ModelProto):
        where = "the ModelProto"
        model = model_or_path
        _refuse_external_data(model, where)
    else:
        raise TypeError(f"vf.onnx.load takes a path, bytes or an onnx.ModelProto, got {type(model_or_path).__name__}")
    if not model.graph.output:
        raise ModelFileError(f"{where}: the model has no graph outputs (an empty or truncated file?)")
    return model, where


def _external_tensors(model):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def _refuse_external_data(model, where: str) -> None:
    tensors = _external_tensors(model)
    if tensors:
        raise ModelFileError(f"{where}: tensor {tensors[0].name!r} keeps its data in an external file; external "
                             "data is read only for a model given by path (from that model's folder)")


def _load_external_data(onnx, model, folder: str, where: str) -> None:
    """Read each external tensor's bytes, only from regular files inside the model's folder."""
    import os

    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

    root = os.path.realpath(folder)
    for tensor in _external_tensors(model):
        info = ExternalDataInfo(tensor)
        location = info.location or ""
        target = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
            raise ModelFileError(f"{where}: tensor {tensor.name!r} points outside the model's folder "
                                 f"({location!r}); refused")
        if not os.path.isfile(target):
            raise ModelFileError(f"{where}: tensor {tensor.name!r}: its external data file {location!r} is missing "
                                 "or not a regular file")
        size = os.path.getsize(target)
        offset = int(info.offset or 0)
        length = int(info.length) if info.length is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelFileError(f"{where}: tensor {tensor.name!r} asks for bytes {offset}..{offset + length} of "
                                 f"{location!r}, which holds {size}")
        load_external_data_for_tensor(tensor, root)


def _check_structure(og, where: str) -> None:
    """Every name a node reads is defined before it (the file's order is topological), once."""
    defined = {vi.name for vi in og.input} | {t.name for t in og.initializer} | {""}
    problems = []
    for index, node in enumerate(og.node):
        label = node.name or f"#{index}"
        missing = [name for name in node.input if name not in defined]
        if missing:
            problems.append(f"{node.op_type} {label!r} reads {', '.join(map(repr, missing))}, which nothing "
                            "before it defines (a dangling name, or a cycle)")
        defined.update(node.output)
    missing = [vi.name for vi in og.output if vi.name not in defined]
    if missing:
        problems.append(f"graph output(s) {', '.join(map(repr, missing))} defined by no node")
    if problems:
        raise ModelFileError(f"{where}: " + "; ".join(problems))


def _initializer(numpy_helper, tensor, where: str) -> np.ndarray:
    """A tensor's values, refused (naming it) when its declared shape does not match the bytes it holds."""
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"{where}: initializer {tensor.name!r} (shape {list(tensor.dims)}) is not readable: "
                             f"{exc}") from exc


# -- converters: (env, node, inputs, attrs, opset) -> vertex -------------------------------------
def _unary(fn):
    return lambda env, node, xs, attrs, opset: fn(xs[0], name=_out(env, node))


def _binary(fn):
    return lambda env, node, xs, attrs, opset: fn(xs[0], xs[1], name=_out(env, node))


def _softmax(fn):
    def convert(env, node, xs, attrs, opset):
        x = xs[0]
        axis = attrs.get("axis", 1 if opset < 13 else -1)
        if opset >= 13:
            return fn(x, axis=axis, name=_out(env, node))
        # Before opset 13: coerce to 2-D at `axis`, normalise each row, restore the shape.
        axis %= x.ndim
        rows = ops.reshape(x, (-1, math.prod(x.shape[axis:]))) if None not in x.shape[axis:] else None
        if rows is None:
            raise UnsupportedOnnxError("softmax over unknown sizes", [(node.op_type, node.name, "dynamic shape")])
        from ..ops.shape import ReshapeLike

        return ReshapeLike()(fn(rows, axis=-1), x, name=_out(env, node))

    return convert


def _gemm(env, node, xs, attrs, opset):
    a, b = xs[0], xs[1]
    if attrs.get("transA", 0):
        a = ops.transpose(a)
    if attrs.get("transB", 0):
        b = ops.transpose(b)
    out = ops.matmul(a, b)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if len(xs) > 2 and xs[2] is not None:
        c = xs[2] if beta == 1.0 else xs[2] * beta
        out = out + c
    return _rename(out, node)


def _conv(env, node, xs, attrs, opset):
    x, w = xs[0], xs[1]
    pads = attrs.get("pads", [0, 0, 0, 0])
    out = ops.conv2d(x, w, stride=tuple(attrs.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                     dilation=tuple(attrs.get("dilations", [1, 1])))
    if len(xs) > 2 and xs[2] is not None:
        out = out + ops.reshape(xs[2], (-1, 1, 1))
    return _rename(out, node)


def _rename(node_out: Node, node) -> Node:
    """Give the last vertex of a composed conversion the ONNX output's name (an identity vertex)."""
    from ..ops.shape import Identity

    return Identity()(node_out, name=_safe(node_out.graph, node.output[0]))


def _out(env: _Env, node) -> str:
    """The vertex name for a node's (first) output: the ONNX tensor name, made unique if it must be."""
    return _safe(env.graph, node.output[0])


def _pool(fn):
    def convert(env, node, xs, attrs, opset):
        pads = attrs.get("pads", [0, 0, 0, 0])
        kernel = tuple(attrs["kernel_shape"])
        return fn(xs[0], kernel, stride=tuple(attrs.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                  name=_out(env, node))

    return convert


def _global_average_pool(env, node, xs, attrs, opset):
    x = xs[0]
    return ops.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, name=_out(env, node))


def _batch_norm(env, node, xs, attrs, opset):
    x, scale, bias, mean, var = xs[:5]
    eps = attrs.get("epsilon", 1e-5)
    shape = (-1,) + (1,) * (x.ndim - 2)
    inv = ops.reshape(scale / ops.sqrt(var + eps), shape)
    out = (x - ops.reshape(mean, shape)) * inv + ops.reshape(bias, shape)
    return _rename(out, node)


def _flatten(env, node, xs, attrs, opset):
    x = xs[0]
    axis = attrs.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
    head, tail = x.shape[:axis], x.shape[axis:]
    if None not in tail:
        return ops.reshape(x, (-1 if None in head or not head else math.prod(head), math.prod(tail)) if head else (1, -1),
                           name=_out(env, node))
    if None not in head:
        return ops.reshape(x, (math.prod(head), -1), name=_out(env, node))
    raise UnsupportedOnnxError("Flatten over unknown sizes", [(node.op_type, node.name, "dynamic shape")])


def _reshape(env, node, xs, attrs, opset):
    x = xs[0]
    target = [int(d) for d in env.const(node.input[1], "Reshape's shape")]
    for i, d in enumerate(target):
        if d == 0:  # copy the input's dimension
            if x.shape[i] is None:
                raise UnsupportedOnnxError("Reshape copies an unknown size", [(node.op_type, node.name, "dynamic")])
            target[i] = x.shape[i]
    return ops.reshape(x, tuple(target), name=_out(env, node))


def _axes(env, node, attrs, position: int = 1):
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > position and node.input[position]:
        return [int(a) for a in np.atleast_1d(env.const(node.input[position], f"{node.op_type}'s axes"))]
    return None


def _squeeze(env, node, xs, attrs, opset):
    x = xs[0]
    axes = _axes(env, node, attrs)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return ops.squeeze(x, tuple(axes), name=_out(env, node))


def _unsqueeze(env, node, xs, attrs, opset):
    return ops.expand_dims(xs[0], tuple(_axes(env, node, attrs)), name=_out(env, node))


def _reduce(fn):
    def convert(env, node, xs, attrs, opset):
        axes = _axes(env, node, attrs)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return _rename(xs[0], node)
            axes = None
        return fn(xs[0], axis=None if axes is None else tuple(axes), keepdims=keep, name=_out(env, node))

    return convert


def _clip(env, node, xs, attrs, opset):
    x = xs[0]
    low = attrs.get("min")
    high = attrs.get("max")
    if len(node.input) > 1 and node.input[1]:
        low = env.const(node.input[1], "Clip's min")
    if len(node.input) > 2 and node.input[2]:
        high = env.const(node.input[2], "Clip's max")
    out = x
    if low is not None:
        out = ops.maximum(out, np.asarray(low, dtype=x.dtype))
    if high is not None:
        out = ops.minimum(out, np.asarray(high, dtype=x.dtype))
    return _rename(out, node)


def _gather(env, node, xs, attrs, opset):
    x = xs[0]
    indices = np.asarray(env.const(node.input[1], "Gather's indices")).astype(np.int64)
    axis = attrs.get("axis", 0) % x.ndim
    index = (slice(None),) * axis + ((int(indices),) if indices.ndim == 0 else (indices,))
    return ops.getitem(x, index, name=_out(env, node))


class TruncDivide(ops.Op):
    """ONNX's integer Div: the quotient rounded toward zero (C's), not numpy's floor."""

    name = "trunc_div"

    def infer(self, a, b):
        from ..graph import Spec
        from ..ops.base import broadcast_shapes

        return Spec(broadcast_shapes(a.shape, b.shape), np.result_type(a.dtype, b.dtype))

    def forward(self, xp, a, b):
        q = xp.floor_divide(a, b)
        # floor differs from truncation when the signs differ and the division is inexact
        return q + ((xp.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)

    def vjp(self, F, g, xs, y):
        return (None, None)


def _div(env, node, xs, attrs, opset):
    if xs[0].dtype.kind in "iu" and xs[1].dtype.kind in "iu":
        return TruncDivide()(xs[0], xs[1], name=_out(env, node))
    return ops.divide(xs[0], xs[1], name=_out(env, node))


def _dropout(env, node, xs, attrs, opset):
    out = _rename(xs[0], node)
    if len(node.output) > 1 and node.output[1]:  # the mask: every unit kept, in inference
        from ..ops.shape import OnesLike

        env.nodes[node.output[1]] = ops.astype(OnesLike()(xs[0]), "bool", name=_safe(env.graph, node.output[1]))
    return out


def _concat(env, node, xs, attrs, opset):
    return ops.concat(xs, axis=attrs["axis"], name=_out(env, node))


def _transpose(env, node, xs, attrs, opset):
    return ops.transpose(xs[0], attrs.get("perm"), name=_out(env, node))


def _identity(env, node, xs, attrs, opset):
    return _rename(xs[0], node)


def _leaky(env, node, xs, attrs, opset):
    return ops.leaky_relu(xs[0], attrs.get("alpha", 0.01), name=_out(env, node))


def _gelu(env, node, xs, attrs, opset):
    return ops.gelu(xs[0], attrs.get("approximate", "none"), name=_out(env, node))


CONVERTERS: dict[str, Callable] = {
    "Add": _binary(ops.add), "Sub": _binary(ops.subtract), "Mul": _binary(ops.multiply),
    "Div": _div, "Pow": _binary(ops.power), "Neg": _unary(ops.negative),
    "Sqrt": _unary(ops.sqrt), "Exp": _unary(ops.exp), "Log": _unary(ops.log), "Abs": _unary(ops.abs),
    "Relu": _unary(ops.relu), "LeakyRelu": _leaky, "Sigmoid": _unary(ops.sigmoid), "Tanh": _unary(ops.tanh),
    "Erf": _unary(ops.erf), "Gelu": _gelu,
    "Softmax": _softmax(ops.softmax), "LogSoftmax": _softmax(ops.log_softmax),
    "MatMul": _binary(ops.matmul), "Gemm": _gemm, "Conv": _conv,
    "MaxPool": _pool(ops.max_pool2d), "AveragePool": _pool(ops.avg_pool2d),
    "GlobalAveragePool": _global_average_pool, "BatchNormalization": _batch_norm,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose, "Concat": _concat,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Identity": _identity, "Dropout": _dropout,
    "Clip": _clip, "ReduceSum": _reduce(ops.sum), "ReduceMean": _reduce(ops.mean),
    "ReduceMax": _reduce(ops.max), "Gather": _gather, "Constant": None,
}


# -- loading --------------------------------------------------------------------------------
# Inputs whose values an op needs when its vertex is built.
BUILD_TIME_INPUTS = {"Reshape": [1], "Squeeze": [1], "Unsqueeze": [1], "Gather": [1], "Clip": [1, 2],
                     "ReduceSum": [1], "ReduceMean": [1], "ReduceMax": [1]}


def build_time_inputs(model) -> list[str]:
    """Graph inputs that some op needs as a constant (a Reshape's shape fed as an input, ...)."""
    graph_inputs = {vi.name for vi in model.graph.input}
    names = []
    for node in model.graph.node:
        for pos in BUILD_TIME_INPUTS.get(node.op_type, []):
            if pos < len(node.input) and node.input[pos] in graph_inputs and node.input[pos] not in names:
                names.append(node.input[pos])
    return names


def load(model_or_path: Any, constants: dict[str, np.ndarray] | None = None) -> OnnxModel:
    """Import an ONNX model (a path, bytes or a ModelProto) as a vertexflow graph.

    Args:
        constants: values for graph inputs that should be fixed at load time, such as a
            shape or axes an op needs when its vertex is built (see `build_time_inputs`).

    External data is read only for a model given by path, only from regular files inside
    that model's folder.

    Raises:
        UnsupportedOnnxError: listing every node (op type, name, reason) that cannot be imported.
        ModelFileError: not an ONNX model (naming the file), a dangling or cyclic name (naming
            the node and the value), an unreadable initializer, or external data it may not read.
    """
    onnx, numpy_helper = _onnx()
    model, where = _read_model(onnx, model_or_path)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    og = model.graph
    _check_structure(og, where)
    initializers = {t.name: _initializer(numpy_helper, t, where) for t in og.initializer}
    bound = {k: np.asarray(v) for k, v in (constants or {}).items()}
    consts = set(initializers) | set(bound)
    known = {**initializers, **bound}
    problems = []
    for vi in og.input:
        if not vi.type.HasField("tensor_type"):
            problems.append(("input", vi.name, "only tensor inputs are supported (not sequences or optionals)"))
    for index, node in enumerate(og.node):
        attrs = _attrs(node)
        if node.op_type == "Constant":
            consts.update(node.output)
            if "value" in attrs:
                known[node.output[0]] = np.asarray(attrs["value"])
            if not ({"value", "value_float", "value_floats", "value_int", "value_ints"} & set(attrs)):
                problems.append((node.op_type, node.name or f"#{index}", "only value constants are supported"))
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append((node.op_type, node.name or f"#{index}", f"domain {node.domain!r} not supported"))
            continue
        why = _why_unsupported(node, attrs, opset, consts, known)
        if why:
            problems.append((node.op_type, node.name or f"#{index}", why))
    if problems:
        listing = "; ".join(f"{op} {name!r}: {why}" for op, name, why in problems)
        raise UnsupportedOnnxError(f"cannot import {len(problems)} node(s): {listing}", problems)

    g = Graph(og.name or "onnx")
    env = _Env(g)
    env.consts.update(initializers)
    env.consts.update(bound)
    inputs = []
    for vi in og.input:
        if vi.name in initializers or vi.name in bound:
            continue
        t = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        node = g.input(vi.name, shape=shape, dtype=dtype)
        env.nodes[vi.name] = node
        inputs.append(node)
    for name, value in initializers.items():
        env.nodes[name] = g.param(_safe(g, name), value=value) if value.dtype.kind == "f" else g.const(
            value, name=_safe(g, name))
    for node in og.node:
        attrs = _attrs(node)
        if node.op_type == "Constant":
            value = next(np.asarray(attrs[k]) for k in ("value", "value_float", "value_floats", "value_int", "value_ints")
                         if k in attrs)
            if "value_float" in attrs or "value_floats" in attrs:
                value = value.astype(np.float32)
            elif "value_int" in attrs or "value_ints" in attrs:
                value = value.astype(np.int64)
            env.consts[node.output[0]] = value
            continue
        xs = [env.node(name) if name else None for name in node.input]
        out = CONVERTERS[node.op_type](env, node, xs, attrs, opset)
        env.nodes[node.output[0]] = out
    outputs = [env.node(vi.name) for vi in og.output]
    return OnnxModel(g, inputs, outputs, opset)
