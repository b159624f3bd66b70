"""Reverse mode, shared by `vf.grad` (vertices) and every executor's `backward` (arrays).

A `ReversePlan` says which vertices take part: those on a path from one of
the `wrt` vertices to the output, through floating-point values. Every
gradient a consumer sends to one of its inputs is an *edge gradient* with a
fixed index; each vertex sums its incoming edge gradients in the plan's order
(by consumer creation, then argument position, never by arrival), applies its
op's derivative rule and writes one edge gradient per input that needs it.

The sweep here visits the vertices from the output back on one thread; the
actor executor runs the same plan with one task per vertex.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GraphError, ShapeError
from ..graph import Node, ancestors, format_shape


@dataclass
class ReversePlan:
    """Which vertices a reverse sweep from `output` to `wrt` touches, and how gradients travel.

    Attributes:
        output: the scalar vertex being differentiated.
        wrt: the vertices whose gradients are wanted.
        forward: every vertex the output depends on, in topological order.
        order: the vertices that receive a gradient, output first.
        needs: {vertex id: per-input flags, True where the input needs a gradient}.
        incoming: {vertex id: edge-gradient indices to sum, in summing order}.
        outgoing: {vertex id: per-input edge-gradient index, or -1 where none is sent}.
        senders: list, per edge-gradient index, of (consumer, argument position);
            index 0 is the seed of the output.
    """

    output: Node
    wrt: tuple[Node, ...]
    forward: list[Node]
    order: list[Node]
    needs: dict[int, tuple[bool, ...]]
    incoming: dict[int, tuple[int, ...]]
    outgoing: dict[int, tuple[int, ...]]
    senders: list[tuple[Node | None, int]]


def differentiable(node: Node) -> bool:
    return node.dtype.kind == "f"


def plan_reverse(output: Node, wrt: Sequence[Node]) -> ReversePlan:
    """The reverse plan for d(output)/d(wrt).

    Raises:
        ShapeError: output is not a scalar, or a wrt vertex is not floating point.
        GraphError: a wrt vertex belongs to another graph.
    """
    if output.shape != ():
        raise ShapeError(
            f"can only differentiate a scalar, but {output.name!r} has shape {format_shape(output.shape)}; "
            "reduce it first (vf.sum or vf.mean)"
        )
    if not differentiable(output):
        raise ShapeError(f"cannot differentiate {output.name!r} of dtype {output.dtype}")
    for w in wrt:
        output.graph.resolve(w)
        if not differentiable(w):
            raise ShapeError(f"cannot differentiate with respect to {w.name!r} of dtype {w.dtype}")
    forward = ancestors([output])
    wanted = {w.id for w in wrt}
    reached: set[int] = set()
    for node in forward:
        if differentiable(node) and (node.id in wanted or any(i.id in reached for i in node.inputs)):
            reached.add(node.id)
    order = [n for n in reversed(forward) if n.id in reached]
    needs = {n.id: tuple(i.id in reached for i in n.inputs) for n in order if n.kind == "op"}

    senders: list[tuple[Node | None, int]] = [(None, 0)]  # edge 0: the seed
    incoming: dict[int, list[int]] = {n.id: [] for n in order}
    if output.id in incoming:  # else the output depends on no wrt vertex at all
        incoming[output.id].append(0)
    outgoing: dict[int, tuple[int, ...]] = {}
    for consumer in sorted((n for n in order if n.kind == "op"), key=lambda n: n.id):
        edges = []
        for pos, (inp, need) in enumerate(zip(consumer.inputs, needs[consumer.id])):
            if need:
                edges.append(len(senders))
                incoming[inp.id].append(len(senders))
                senders.append((consumer, pos))
            else:
                edges.append(-1)
        outgoing[consumer.id] = tuple(edges)
    return ReversePlan(
        output, tuple(wrt), forward, order, needs, {k: tuple(v) for k, v in incoming.items()}, outgoing, senders
    )


def sweep(
    plan: ReversePlan,
    seed: Any,
    apply_vjp: Callable[[Node, Any], Sequence[tuple[int, Any]]],
    add: Callable,
) -> dict[int, Any]:
    """Run the reverse sweep of `plan` on one thread.

    Args:
        seed: gradient of the output (ones).
        apply_vjp: (vertex, its total gradient) -> [(edge index, gradient)] it sends its inputs.
        add: how two gradients are added.

    Returns:
        {vertex id: total gradient} for the wrt vertices that the output depends on.
    """
    edges: list[Any] = [None] * len(plan.senders)
    edges[0] = seed
    wanted = {w.id for w in plan.wrt}
    result: dict[int, Any] = {}
    incoming = plan.incoming
    for node in plan.order:
        g = None
        for i in incoming[node.id]:  # summed in the plan's fixed order, each let go once summed
            part = edges[i]
            if part is not None:
                edges[i] = None
                g = part if g is None else add(g, part)
        if g is None:
            continue
        if node.id in wanted:
            result[node.id] = g
        if node.kind != "op":
            continue
        for edge, gi in apply_vjp(node, g):
            edges[edge] = gi
    return result


def sum_edges(add: Callable, parts: Iterable[Any]):
    """A vertex's edge gradients summed in the order given (the plan's fixed order, never arrival).

    None parts (no gradient sent) are skipped; None if every part is None.
    """
    total = None
    for part in parts:
        if part is not None:
            total = part if total is None else add(total, part)
    return total


def check_rule_results(node: Node, needs: Sequence[bool], grads, shape_of: Callable[[Any], tuple]) -> None:
    """A derivative rule must return one entry per input, and a gradient of the input's shape where needed.

    Raises:
        GraphError: the wrong number of entries.
        ShapeError: a gradient of the wrong shape, naming the op, the vertex and the input.
    """
    if grads is None or len(grads) != len(node.inputs):
        raise GraphError(
            f"derivative rule of {node.op_name} {node.name!r} returned "
            f"{'None' if grads is None else len(grads)} gradients for {len(node.inputs)} inputs"
        )
    for pos, need in enumerate(needs):
        gi = grads[pos]
        if not need or gi is None:
            continue
        inp = node.inputs[pos]
        got = shape_of(gi)
        if got != inp.shape and not _fits(got, inp.shape):
            raise ShapeError(
                f"derivative rule of {node.op_name} {node.name!r} gave a gradient of shape "
                f"{format_shape(got)} for input {pos} ({inp.name!r}) of shape {format_shape(inp.shape)}"
            )


def _fits(got: tuple, expected: tuple) -> bool:
    return len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))
