"""Symbolic differentiation: `vf.grad` adds gradient vertices to the graph."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GraphError
from ..graph import Node
from ..ops import shape
from .namespace import GraphMath
from .reverse import check_rule_results, plan_reverse, sweep


def grad(y: Node, wrt: Node | str | Sequence[Node | str], *, allow_unused: bool = False) -> Node | list[Node]:
    """Gradient vertices of scalar `y` with respect to each of `wrt`.

    Each result is a vertex named `d{y}/d{x}`, marked as a gradient vertex, that
    any executor can run. Gradient vertices are ordinary vertices, so a
    gradient can be differentiated again. Vertices built along the way that no
    result uses are removed again.

    Args:
        y: a scalar, floating-point vertex.
        wrt: one vertex (or name) or a list of them.
        allow_unused: a `wrt` vertex that `y` does not depend on gets a zero gradient
            (PyTorch's name; its `materialize_grads=True` gives zeros too) instead of an error.

    Returns:
        One vertex for one `wrt`, else a list in the order given.

    Raises:
        ShapeError: y is not a scalar, or a wrt vertex is not floating point.
        GraphError: a wrt vertex is unknown or belongs to another graph, or `y` does not
            depend on it and allow_unused is False.
    """
    graph = y.graph
    single = isinstance(wrt, (Node, str))
    targets = [graph.resolve(w) for w in ([wrt] if single else wrt)]
    plan = plan_reverse(y, targets)
    if not allow_unused:
        unused = [t.name for t in targets if t.id != y.id and t.id not in plan.incoming]
        if unused:
            raise GraphError(f"{y.name!r} does not depend on {', '.join(map(repr, unused))}: its gradient there "
                             "is zero by construction; pass allow_unused=True to get zeros, or leave it out")
    mark = graph.mark()

    def apply_vjp(node: Node, g):
        needs = plan.needs[node.id]
        grads = node.op.vjp(GraphMath(needs), g, node.inputs, node)
        check_rule_results(node, needs, grads, lambda n: n.shape)
        return [(edge, grads[pos]) for pos, edge in enumerate(plan.outgoing[node.id]) if edge >= 0]

    totals = sweep(plan, seed=shape.OnesLike()(y, role="grad"), apply_vjp=apply_vjp, add=GraphMath().add)
    results = []
    for target in targets:
        total = totals.get(target.id)
        name = graph.fresh_name(f"d{y.name}/d{target.name}")
        if total is None:
            results.append(shape.ZerosLike()(target, name=name, role="grad"))
        else:
            results.append(shape.Identity()(total, name=name, role="grad"))
    graph.prune(since=mark, keep=results)
    return results[0] if single else results
