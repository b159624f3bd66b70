"""Reverse-mode differentiation: symbolic (`grad`), the shared sweep, and gradient checks."""

from .check import GradientMismatch, check_grad, numeric_grad
from .grad import grad
from .namespace import ArrayMath, GraphMath
from .reverse import ReversePlan, plan_reverse

__all__ = ["grad", "check_grad", "numeric_grad", "GradientMismatch", "ArrayMath", "GraphMath", "ReversePlan", "plan_reverse"]
