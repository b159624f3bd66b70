"""Losses. cross_entropy and mse are ops of their own; binary_cross_entropy is built from ops."""

from __future__ import annotations

from .. import ops
from ..graph import Node
from ..ops import cross_entropy, mse


def binary_cross_entropy(pred: Node, target: Node, eps: float = 1e-7, name: str | None = None) -> Node:
    """Mean of -(t log p + (1 - t) log(1 - p)) for probabilities p, clipped to [eps, 1 - eps] as Keras does."""
    p = ops.minimum(ops.maximum(pred, eps), 1.0 - eps)
    terms = target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p)
    return ops.negative(ops.mean(terms), name=name)


__all__ = ["binary_cross_entropy", "cross_entropy", "mse"]
