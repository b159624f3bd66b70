"""ONNX's control flow, built into the graph: If, Loop and Scan.

A body (an ONNX sub-graph) is inlined: its nodes are converted into the enclosing graph, its inputs
bound to the vertices given, its names made unique, and the names it takes from enclosing scopes
looked up there. So an imported loop is plain vertices, differentiable and run by every executor
like the rest of the model:

- If: a condition known when building (a constant, or a fed value the model is built for) keeps
  its branch only; a condition known only at run time builds both branches and selects between
  their outputs (`where`), when the two give the same shapes and dtypes (as `jax.lax.cond` does
  under `vmap`), and else is needed when building (the model is built per value).
- Scan: one copy of the body per step along the scan axes (whose length is needed when building),
  states threaded from step to step, per-step outputs stacked.
- Loop: unrolled while its trip count and condition are known when building: constants, or values
  computed from feeds, for which the model is then built per fed value (as `jax.jit` with static
  arguments); a loop whose end depends on a param (a trainable initializer) is refused, naming
  the node.
"""

from __future__ import annotations

import itertools

import numpy as np

from .. import ops
from ..graph import Node
from . import convert
from .convert import NeedsValue, Unsupported, named, why_unsupported

MAX_UNROLLED_STEPS = 4096  # a loop or scan longer than this when built is refused, not unrolled


class _Where:
    """What an inlined node's errors name (the importer's source, for folding)."""

    def __init__(self, where: str):
        self.where = where


def _scope(env) -> dict:
    return getattr(env, "scope", None) or {}


def _lookup(env, name: str) -> str:
    """The env's tensor name for `name` as the current body sees it (inner scopes first)."""
    return _scope(env).get(name, name)


def inline(env, graph, bindings: dict, label: str) -> list:
    """Convert the nodes of ONNX graph `graph` into env's graph, its inputs bound (by position) to
    `bindings` (vertices or arrays); the body's outputs, as vertices or arrays known now."""
    from .importer import _constant_value, _fold, _foldable
    from .reading import node_attributes

    counter = env.__dict__.setdefault("_inlined", itertools.count(1))
    prefix = f"{label}/{next(counter)}/"
    parent = _scope(env)
    scope = dict(parent)
    for vi, value in zip(graph.input, bindings):
        if value is None:  # an optional input left out
            scope[vi.name] = ""
            continue
        local = prefix + vi.name
        scope[vi.name] = local
        env.keep(local, value)
    for init in graph.initializer:
        from onnx import numpy_helper

        local = prefix + init.name
        scope[init.name] = local
        env.known[local] = numpy_helper.to_array(init)
    env.scope, saved = scope, parent
    try:
        for node in graph.node:
            attrs = node_attributes(node)
            op = node.op_type
            renamed = _renamed(node, scope, prefix)
            if op == "Constant":
                env.known[renamed.output[0]] = _constant_value(attrs)
                continue
            why = why_unsupported(node, attrs, {})
            if why:
                raise Unsupported(f"in its body, {op} {node.name or op!r}: {why}")
            if _foldable(env, renamed):
                results = _fold(_Where(label), env, renamed, attrs, node.name or op)
            else:
                results = convert.CONVERTERS[op](env, renamed, _inputs(env, renamed), attrs)
            if not isinstance(results, (list, tuple)):
                results = [results]
            for name, result in zip(renamed.output, results):
                if name and result is not None:
                    env.keep(name, result)
    finally:
        env.scope = saved
    return [_value_or_node(env, scope.get(vi.name, vi.name)) for vi in graph.output]


def _renamed(node, scope: dict, prefix: str):
    """A copy of `node` reading names through `scope` and writing fresh ones (added to `scope`)."""
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    del copy.input[:]
    copy.input.extend(scope.get(n, n) if n else "" for n in node.input)
    del copy.output[:]
    for n in node.output:
        if n:
            scope[n] = prefix + n
        copy.output.append(prefix + n if n else "")
    return copy


def _inputs(env, node):
    return convert.Inputs(env, node)


def _value_or_node(env, name: str):
    return env.known[name] if name in env.known and name not in env.nodes else env.node(name)


# -- If -------------------------------------------------------------------------------------------
def _if(env, node, xs, attrs):
    label = node.name or node.output[0] or "If"
    cond_name = node.input[0]
    if cond_name in env.known:
        branch = attrs["then_branch"] if bool(np.asarray(env.known[cond_name]).reshape(-1)[0]) else attrs["else_branch"]
        outs = inline(env, branch, [], label)
        return [named(o, env, node, k) if isinstance(o, Node) else o for k, o in enumerate(outs)]
    then = inline(env, attrs["then_branch"], [], label)
    other = inline(env, attrs["else_branch"], [], label)
    cond = ops.reshape(xs[0], ())
    outs = []
    for k, (a, b) in enumerate(zip(then, other)):
        if not isinstance(a, (Node, np.ndarray)) or not isinstance(b, (Node, np.ndarray)):
            raise NeedsValue(cond_name, f"If {label!r}'s condition (its branches give sequences or optionals)")
        a = a if isinstance(a, Node) else env.graph.const(np.asarray(a))
        b = b if isinstance(b, Node) else env.graph.const(np.asarray(b))
        if a.shape != b.shape or a.dtype != b.dtype or None in a.shape:
            raise NeedsValue(cond_name, f"If {label!r}'s condition (its branches give {a.shape} {a.dtype} and "
                                        f"{b.shape} {b.dtype})")
        outs.append(ops.where(cond, a, b, name=env.graph.fresh_name(node.output[k] or f"If_{k}")))
    return outs


# -- Scan -----------------------------------------------------------------------------------------
def _scan(env, node, xs, attrs):
    if env.opset < 9:
        raise Unsupported("Scan before opset 9 (with a batch axis and sequence_lens)")
    label = node.name or node.output[0] or "Scan"
    body = attrs["body"]
    scans = int(attrs["num_scan_inputs"])
    states = len(node.input) - scans
    in_axes = list(attrs.get("scan_input_axes", [0] * scans))
    in_reverse = list(attrs.get("scan_input_directions", [0] * scans))
    outputs = len(body.output) - states
    out_axes = list(attrs.get("scan_output_axes", [0] * outputs))
    out_reverse = list(attrs.get("scan_output_directions", [0] * outputs))
    sequences = [_value_or_node(env, node.input[states + k]) for k in range(scans)]
    lengths = set()
    for k, seq in enumerate(sequences):
        axis = in_axes[k] % np.ndim(seq) if not isinstance(seq, Node) else in_axes[k] % seq.ndim
        size = seq.shape[axis]
        if size is None:
            size = env.sizes(node.input[states + k], f"Scan {label!r}'s sequence lengths")[axis]
        in_axes[k] = axis
        lengths.add(size)
    if len(lengths) != 1:
        raise Unsupported(f"scan inputs of different lengths {sorted(lengths)}")
    length = lengths.pop()
    if length > MAX_UNROLLED_STEPS:
        raise Unsupported(f"a scan of {length} steps (at most {MAX_UNROLLED_STEPS} are unrolled)")
    carried = [_value_or_node(env, node.input[k]) for k in range(states)]
    per_step: list[list] = [[] for _ in range(outputs)]
    for t in range(length):
        slices = []
        for k, seq in enumerate(sequences):
            step = length - 1 - t if in_reverse[k] else t
            index = (slice(None),) * in_axes[k] + (step,)
            slices.append(np.asarray(seq)[index] if not isinstance(seq, Node) else ops.getitem(seq, index))
        results = inline(env, body, carried + slices, label)
        carried = results[:states]
        for k in range(outputs):
            per_step[k].append(results[states + k])
    outs = [named(_as_node(env, c), env, node, k) for k, c in enumerate(carried)]
    for k in range(outputs):
        steps = per_step[k][::-1] if out_reverse[k] else per_step[k]
        stacked = _stack(env, steps, out_axes[k])
        outs.append(named(stacked, env, node, states + k))
    return outs


def _as_node(env, value):
    return value if isinstance(value, Node) else env.graph.const(np.asarray(value))


def _stack(env, steps: list, axis: int):
    nodes = [_as_node(env, s) for s in steps]
    axis %= nodes[0].ndim + 1
    return ops.concat([ops.expand_dims(n, axis) for n in nodes], axis=axis)


# -- Loop -----------------------------------------------------------------------------------------
def _loop(env, node, xs, attrs):
    label = node.name or node.output[0] or "Loop"
    body = attrs["body"]
    limit = None
    if xs.present(0):
        limit = int(np.asarray(xs.value(0, f"Loop {label!r}'s trip count")).reshape(-1)[0])
    cond = True
    if xs.present(1):
        cond = bool(np.asarray(xs.value(1, f"Loop {label!r}'s condition")).reshape(-1)[0])
    carried = [_value_or_node(env, n) for n in node.input[2:]]
    states = len(carried)
    outputs = len(body.output) - 1 - states
    per_step: list[list] = [[] for _ in range(outputs)]
    i = 0
    while cond and (limit is None or i < limit):
        if i >= MAX_UNROLLED_STEPS:
            raise Unsupported(f"a loop of more than {MAX_UNROLLED_STEPS} steps (they are unrolled when built)")
        results = inline(env, body, [np.asarray(i, dtype=np.int64), np.asarray(cond)] + carried, label)
        flag = results[0]
        if isinstance(flag, Node):  # the model is built per value of the feeds it comes from
            raise NeedsValue(body.output[0].name, f"Loop {label!r}'s condition in step {i}")
        cond = bool(np.asarray(flag).reshape(-1)[0])
        carried = results[1:1 + states]
        for k in range(outputs):
            per_step[k].append(results[1 + states + k])
        i += 1
    outs = [named(_as_node(env, c), env, node, k) for k, c in enumerate(carried)]
    for k in range(outputs):
        if not per_step[k]:
            raise Unsupported("a loop that runs no step has scan outputs of unknown shape")
        outs.append(named(_stack(env, per_step[k], 0), env, node, states + k))
    return outs


BODIES = {"If", "Loop", "Scan"}


def _guarded(convert):
    """A control-flow converter whose needs inside a body are reported as needs of the node itself, so
    the importer traces them to the model's inputs through the node's inputs and the names its bodies
    read."""

    def guarded(env, node, xs, attrs):
        try:
            return convert(env, node, xs, attrs)
        except NeedsValue as need:
            if need.tensor in node.input:
                raise
            first = next((o for o in node.output if o), need.tensor)
            raise NeedsValue(first, need.what, need.shape) from None

    return guarded


# -- ops defined by an ONNX function ---------------------------------------------------------------
def _function(env, node, xs, attrs):
    """An op that ONNX defines as a function of other ops (AffineGrid, LinearAttention, ...): its body,
    for these inputs and attributes, inlined as any other."""
    import onnx
    from onnx import FunctionProto, GraphProto, helper

    schema = onnx.defs.get_schema(node.op_type, env.opset, "")
    full = onnx.NodeProto()
    full.CopyFrom(node)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in given and attr.default_value.type:
            full.attribute.append(attr.default_value)
    proto = FunctionProto()
    versions = [v for v in schema.function_opset_versions if v <= env.opset]
    if versions:
        proto.ParseFromString(schema.get_function_with_opset_version(max(versions)))
    else:
        versions = [v for v in schema.context_dependent_function_opset_versions if v <= env.opset]
        if not versions:
            raise Unsupported(f"ONNX defines no function for {node.op_type} at opset {env.opset}")
        types = []
        for k in range(len(node.input)):
            x = xs[k]
            if x is None:
                types.append(onnx.TypeProto())
                continue
            dims = [d if d is not None else "?" for d in x.shape]
            types.append(helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(x.dtype), dims))
        proto.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            max(versions), full.SerializeToString(), [t.SerializeToString() for t in types]))
    given = {a.name: a for a in full.attribute}
    body = GraphProto()
    for name in proto.input:
        body.input.append(helper.make_value_info(name, onnx.TypeProto()))
    for name in proto.output:
        body.output.append(helper.make_value_info(name, onnx.TypeProto()))
    for inner in proto.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        del copy.attribute[:]
        for attr in inner.attribute:
            if attr.ref_attr_name:
                if attr.ref_attr_name in given:
                    value = onnx.AttributeProto()
                    value.CopyFrom(given[attr.ref_attr_name])
                    value.name = attr.name
                    copy.attribute.append(value)
            else:
                copy.attribute.append(attr)
        body.node.append(copy)
    inner_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=env.opset)
    bindings = [_value_or_node(env, n) if n else None for n in node.input]
    bindings += [None] * (len(proto.input) - len(bindings))
    saved, env.opset = env.opset, inner_opset  # the body's nodes mean what they mean in its opset
    try:
        outs = inline(env, body, bindings, node.name or node.output[0] or node.op_type)
    finally:
        env.opset = saved
    return [named(o, env, node, k) if isinstance(o, Node) else o for k, o in enumerate(outs[:len(node.output)])]


# The ops ONNX defines as functions of other ops that have no converter of their own here (onnx
# 1.20's schemas): each is imported by inlining its function body. Listed, not looked up, so that
# `vf.onnx` is usable without importing onnx.
FUNCTION_OPS = ("AffineGrid", "Bernoulli", "CausalConvWithState", "LinearAttention", "SequenceMap", "SwiGLU")


def outer_names(node) -> set[str]:
    """The names a node's bodies read from enclosing scopes (every body, nested ones included)."""
    found: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for graph in graphs:
            defined = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                found.update(n for n in inner.input if n and n not in defined)
                found.update(n for n in outer_names(inner) if n not in defined)
                defined.update(n for n in inner.output if n)
    return found

CONVERTERS = {"If": _guarded(_if), "Scan": _guarded(_scan), "Loop": _guarded(_loop)}

ALLOWED_ATTRS = {
    "If": {"then_branch", "else_branch"}, "Loop": {"body"},
    "Scan": {"body", "num_scan_inputs", "scan_input_axes", "scan_input_directions", "scan_output_axes",
             "scan_output_directions"},
}

guarded_function = _guarded(_function)
