"""Patterns in an exported model that import as one vertex: the GELU torch writes as five nodes.

torch's exporter (opset < 20) writes `nn.GELU()` as Div(x, sqrt 2) or Mul(x, 1/sqrt 2),
Erf, Add 1, Mul by x and Mul by 0.5, in either association; onnxruntime's
`bias_gelu_fusion` makes it one kernel, and so does this: `fuse_gelu` replaces
each such chain, whose inner values nothing else reads, by one `Gelu` node
(vertexflow's one-pass GELU). Its values differ from the five nodes' by float
rounding only (the tests compare both with onnxruntime). `vf.onnx.load(...,
optimize=False)` imports the nodes as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

SQRT2 = math.sqrt(2.0)


def _scalar(name: str, known: Mapping[str, np.ndarray]) -> float | None:
    value = known.get(name)
    if value is None or np.size(value) != 1 or np.asarray(value).dtype.kind != "f":
        return None
    return float(np.asarray(value).reshape(()))


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def fuse_gelu(nodes: Sequence, known: Mapping[str, np.ndarray], outputs: Sequence[str], onnx) -> list:
    """`nodes` with every exported exact-GELU chain replaced by one Gelu node (the chain's last output)."""
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    kept = set(outputs)

    def only_use(name: str) -> int | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in kept else None

    def other(node, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    replaced: dict[int, object] = {}  # index of a chain's last node -> the Gelu node
    dropped: set[int] = set()
    for index, node in enumerate(nodes):
        if node.op_type != "Erf" or node.domain not in ("", "ai.onnx"):
            continue
        scale = producer.get(node.input[0])
        if scale is None:
            continue
        s = nodes[scale]
        if s.op_type == "Div" and _near(_scalar(s.input[1], known), SQRT2):
            x = s.input[0]
        elif s.op_type == "Mul" and _near(_scalar(s.input[1], known), 1 / SQRT2):
            x = s.input[0]
        elif s.op_type == "Mul" and _near(_scalar(s.input[0], known), 1 / SQRT2):
            x = s.input[1]
        else:
            continue
        chain = [scale, index]
        if only_use(s.output[0]) != index:
            continue
        add = only_use(node.output[0])
        if add is None or nodes[add].op_type != "Add" or not _near(_scalar(other(nodes[add], node.output[0]), known),
                                                                   1.0):
            continue
        chain.append(add)
        first = only_use(nodes[add].output[0])
        if first is None or nodes[first].op_type != "Mul":
            continue
        factor = other(nodes[first], nodes[add].output[0])
        half = None
        if factor == x:  # (x * (1 + erf)) * 0.5
            half = only_use(nodes[first].output[0])
            if half is None or nodes[half].op_type != "Mul" or not _near(
                    _scalar(other(nodes[half], nodes[first].output[0]), known), 0.5):
                continue
            chain += [first, half]
        else:  # (x * 0.5) * (1 + erf)
            m = producer.get(factor)
            if m is None or nodes[m].op_type != "Mul" or only_use(factor) != first:
                continue
            if not (x in nodes[m].input and _near(_scalar(other(nodes[m], x), known), 0.5)):
                continue
            chain += [m, first]
        last = max(chain)
        out = nodes[last].output[0]
        if any(i in dropped or i in replaced for i in chain) or producer.get(x, -1) >= min(chain):
            continue
        replaced[last] = onnx.helper.make_node("Gelu", [x], [out], name=(nodes[last].name or out) + "/gelu")
        dropped.update(i for i in chain if i != last)
    if not replaced:
        return list(nodes)
    return [replaced.get(i, node) for i, node in enumerate(nodes) if i not in dropped]
