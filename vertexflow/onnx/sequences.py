"""ONNX's sequence and optional values, where exporters write them inside a model (a split into a
list, a list concatenated back, a loop that collects tensors, an optional argument): values known
when the graph is built. A sequence is a list of tensors, each a vertex or an array; an optional is
one tensor or none. A model whose inputs or outputs are sequences is refused (vertices are tensors).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Node
from .convert import Unsupported, named


class SequenceValue:
    """A sequence of tensors (vertices or arrays), known when building."""

    def __init__(self, items):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)


class OptionalValue:
    """An optional tensor, sequence or nothing (None), known when building."""

    def __init__(self, value):
        self.value = value


BUILD_TIME = (SequenceValue, OptionalValue)


def _known(env, name: str, what: str):
    value = env.known.get(name)
    if not isinstance(value, BUILD_TIME):
        if name in env.nodes or name in env.known:  # a tensor where a sequence or optional is wanted
            return None
        raise Unsupported(f"{what} ({name!r}) is not a sequence or optional known when building")
    return value


def _sequence(env, node, k: int = 0) -> SequenceValue:
    value = _known(env, node.input[k], f"{node.op_type}'s input")
    if not isinstance(value, SequenceValue):
        raise Unsupported(f"{node.op_type}'s input {node.input[k]!r} is not a sequence")
    return value


def _item(env, name: str):
    return env.known[name] if name in env.known and name not in env.nodes else env.node(name)


def _position(xs, k: int, length: int, default: int, what: str, insert: bool = False) -> int:
    position = xs.value(k, what)
    position = default if position is None else int(np.asarray(position).reshape(-1)[0])
    limit = length + 1 if insert else length
    if not -length <= position < limit:
        raise Unsupported(f"{what} {position} is outside a sequence of {length}")
    return position + length if position < 0 else position


def _construct(env, node, xs, attrs):
    return SequenceValue(_item(env, n) for n in node.input if n)


def _empty(env, node, xs, attrs):
    return SequenceValue([])


def _insert(env, node, xs, attrs):
    seq = _sequence(env, node)
    items = list(seq.items)
    position = _position(xs, 2, len(items), len(items), "SequenceInsert's position", insert=True)
    items.insert(position, _item(env, node.input[1]))
    return SequenceValue(items)


def _erase(env, node, xs, attrs):
    seq = _sequence(env, node)
    items = list(seq.items)
    del items[_position(xs, 1, len(items), len(items) - 1, "SequenceErase's position")]
    return SequenceValue(items)


def _at(env, node, xs, attrs):
    seq = _sequence(env, node)
    item = seq.items[_position(xs, 1, len(seq), 0, "SequenceAt's position")]
    return named(item, env, node) if isinstance(item, Node) else item


def _length(env, node, xs, attrs):
    return np.asarray(len(_sequence(env, node)), dtype=np.int64)


def _as_node(env, value):
    return value if isinstance(value, Node) else env.graph.const(np.asarray(value))


def _concat_from_sequence(env, node, xs, attrs):
    items = [_as_node(env, v) for v in _sequence(env, node).items]
    if not items:
        raise Unsupported("concatenating an empty sequence")
    axis = attrs["axis"]
    if attrs.get("new_axis", 0):
        axis %= items[0].ndim + 1
        items = [ops.expand_dims(v, axis) for v in items]
    return ops.concat(items, axis=axis, name=env.graph.fresh_name(node.output[0]))


def _split_to_sequence(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", 0) % x.ndim
    size = env.sizes(node.input[0], "SplitToSequence's input sizes")[axis]
    split = xs.value(1, "SplitToSequence's split")
    if split is None:
        pieces = [1] * size
    elif np.ndim(split) == 0:
        step = int(split)
        pieces = [min(step, size - k) for k in range(0, size, step)]
    else:
        pieces = [int(s) for s in np.asarray(split)]
    keep = attrs.get("keepdims", 1) or split is not None
    items, start = [], 0
    for piece in pieces:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + piece) if keep else start
        items.append(ops.getitem(x, tuple(index)))
        start += piece
    return SequenceValue(items)


def _optional(env, node, xs, attrs):
    return OptionalValue(_item(env, node.input[0]) if node.input and node.input[0] else None)


def _optional_has_element(env, node, xs, attrs):
    if not node.input or not node.input[0]:
        return np.asarray(False)
    value = _known(env, node.input[0], "OptionalHasElement's input")
    if value is None or isinstance(value, SequenceValue):  # a tensor or a sequence: present
        return np.asarray(True)
    return np.asarray(value.value is not None)


def _optional_get_element(env, node, xs, attrs):
    value = _known(env, node.input[0], "OptionalGetElement's input")
    if value is None:  # a plain tensor
        item = _item(env, node.input[0])
    elif isinstance(value, SequenceValue):
        return value
    elif value.value is None:
        raise Unsupported("OptionalGetElement of an optional that holds nothing")
    else:
        item = value.value
    return named(item, env, node) if isinstance(item, Node) else item


CONVERTERS = {
    "SequenceConstruct": _construct, "SequenceEmpty": _empty, "SequenceInsert": _insert, "SequenceErase": _erase,
    "SequenceAt": _at, "SequenceLength": _length, "ConcatFromSequence": _concat_from_sequence,
    "SplitToSequence": _split_to_sequence, "Optional": _optional, "OptionalHasElement": _optional_has_element,
    "OptionalGetElement": _optional_get_element,
}

ALLOWED_ATTRS = {
    "SequenceEmpty": {"dtype"}, "ConcatFromSequence": {"axis", "new_axis"}, "SplitToSequence": {"axis", "keepdims"},
    "Optional": {"type"},
}
