"""Numeric gradient checks: central finite differences against runtime backward.

float64 graphs get tight tolerances; float32 ones a larger step and looser
tolerances (its rounding swamps a 1e-6 difference quotient); other dtypes are
refused with what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import GradientMismatch
from ..graph import Node

# (eps, rtol, atol) by the widest float dtype involved.
DEFAULTS = {np.dtype("float64"): (1e-6, 1e-5, 1e-7), np.dtype("float32"): (1e-3, 1e-2, 1e-3)}


def numeric_grad(y: Node, wrt: Sequence[Node], feeds: Mapping | None = None, eps: float = 1e-6) -> dict[Node, np.ndarray]:
    """d(y)/d(wrt) by central differences, perturbing one element at a time.

    Params are perturbed in place and restored, even if a run fails.
    """
    from ..executor import SequentialExecutor

    executor = SequentialExecutor(y.graph)
    feeds = {y.graph.resolve(k): np.array(v) for k, v in (feeds or {}).items()}
    out: dict[Node, np.ndarray] = {}
    for node in wrt:
        node = y.graph.resolve(node)
        base = np.array(node.value if node.kind == "param" else feeds[node], dtype=node.dtype)
        grad = np.zeros(base.shape, dtype=np.float64)

        def at(value, node=node):
            if node.kind == "param":
                node.value = value
                return float(executor.run(feeds, y))
            return float(executor.run({**feeds, node: value}, y))

        try:
            for index in np.ndindex(base.shape):
                shifted = base.copy()
                shifted[index] = base[index] + eps
                up = at(shifted)
                shifted[index] = base[index] - eps
                down = at(shifted)
                grad[index] = (up - down) / (2 * eps)
        finally:
            if node.kind == "param":
                node.value = base
        out[node] = grad
    return out


def check_grad(
    y: Node,
    wrt: Sequence[Node] | Node,
    feeds: Mapping | None = None,
    *,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[Node, tuple[np.ndarray, np.ndarray]]:
    """Check runtime backward of scalar `y` against central finite differences.

    Args:
        eps, rtol, atol: the step and tolerances; by default from the dtype of `y`
            (float64: 1e-6, 1e-5, 1e-7; float32: 1e-3, 1e-2, 1e-3).

    Returns:
        {vertex: (analytic, numeric)} when every gradient agrees within
        `atol + rtol * |numeric|`.

    Raises:
        GradientMismatch: naming each vertex whose gradient disagrees, with its worst error.
    """
    from ..executor import SequentialExecutor

    wrt = [wrt] if isinstance(wrt, (Node, str)) else list(wrt)
    wrt = [y.graph.resolve(w) for w in wrt]
    widest = max([np.dtype(y.dtype), *(np.dtype(w.dtype) for w in wrt)], key=lambda d: d.itemsize)
    if widest not in DEFAULTS:
        raise TypeError(f"check_grad: finite differences need float64 or float32 vertices, not {widest}; "
                        "build the graph in float64 to check it")
    eps, rtol, atol = (given if given is not None else default
                       for given, default in zip((eps, rtol, atol), DEFAULTS[widest]))
    _, analytic = SequentialExecutor(y.graph).backward(feeds, y, wrt)
    numeric = numeric_grad(y, wrt, feeds, eps)
    report: dict[str, Any] = {}
    bad = []
    for node in wrt:
        a, n = np.asarray(analytic[node], np.float64), numeric[node]
        err = float(np.max(np.abs(a - n), initial=0.0))
        report[node.name] = (err, a, n)
        if not np.allclose(a, n, rtol=rtol, atol=atol):
            bad.append(f"{node.name!r} (max abs error {err:.3g})")
    if bad:
        raise GradientMismatch(
            f"gradients of {y.name!r} disagree with finite differences for " + ", ".join(bad), report
        )
    return {node: (analytic[node], numeric[node]) for node in wrt}
