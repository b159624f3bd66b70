"""Activations that numpy computes in several passes, as ops of one pass each: GELU, hard sigmoid, hard swish.

Each is one vertex (so a product's epilogue can carry it, `rewrites.py`) whose
forward is a compiled kernel where numba is installed (`kernels/`) and numpy
passes over one buffer otherwise; the derivative rule sits below the forward,
written against `F` like every op's.
"""

from __future__ import annotations

import math

import numpy as np

from ..graph import Spec
from .base import Op, numel, require_float

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(xp, x):
    if xp is np:
        if x.dtype == np.float32:
            from ..kernels.special import erf32

            return erf32(x)
        from scipy import special
    else:
        from cupyx.scipy import special
    return special.erf(x)


class Gelu(Op):
    """x * P(X <= x) for a standard normal X, exactly (with erf), as torch.nn.GELU()."""

    name = "gelu"
    writes_out = True

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        return x

    def forward(self, xp, x, out=None):
        if xp is np and x.dtype == np.float32:
            from ..kernels.special import gelu32

            return gelu32(x, out=out)
        if x.dtype.itemsize < 4:  # float16 and smaller: in float32, rounded once
            value = self.forward(xp, x.astype(np.float32)).astype(x.dtype)
            if out is None:
                return value
            xp.copyto(out, value)
            return out
        # float64 (and cupy): in passes over one buffer
        out = xp.multiply(x, x.dtype.type(0.7071067811865476), out=out)
        out = _erf_into(xp, out)
        out += x.dtype.type(1)
        out *= x
        out *= x.dtype.type(0.5)
        return out

    def vjp(self, F, g, xs, y):
        return (F.apply(GeluGrad(), xs[0], g),)

    def cost(self, x: Spec) -> float:
        return 12.0 * numel(x)


def _erf_into(xp, a):
    """erf(a) written into a (scipy's ufunc takes out=)."""
    if xp is np:
        from scipy import special
    else:
        from cupyx.scipy import special
    return special.erf(a, out=a)


class GeluGrad(Op):
    """g * gelu'(x) = g * (Phi(x) + x phi(x)): the derivative rule of Gelu, as an op of its own."""

    name = "gelu_grad"

    def infer(self, x: Spec, g: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, x, g):
        if xp is np and x.dtype == np.float32 and g.dtype == np.float32:
            from ..kernels.special import gelu_grad32

            return gelu_grad32(x, g)
        cdf = _erf(xp, x * x.dtype.type(0.7071067811865476))
        cdf += 1
        cdf *= 0.5
        pdf = xp.exp(x * x * x.dtype.type(-0.5))
        pdf *= x.dtype.type(_INV_SQRT_2PI)
        pdf *= x
        pdf += cdf
        return pdf * g

    def vjp(self, F, h, xs, y):
        # d/dx [g (Phi + x phi)] = g phi (2 - x^2); d/dg = Phi + x phi (this op again, applied to h).
        x, g = xs
        need_x, need_g = F.needs_input_grad
        gx = None
        if need_x:
            pdf = F.mul(F.exp(F.mul(F.mul(x, x), -0.5)), _INV_SQRT_2PI)
            gx = F.mul(F.mul(F.mul(h, g), pdf), F.sub(2.0, F.mul(x, x)))
        return (gx, F.apply(GeluGrad(), x, h) if need_g else None)

    def cost(self, x: Spec, g: Spec) -> float:
        return 16.0 * numel(x)


class HardSigmoid(Op):
    """clip(alpha * x + beta, 0, 1), as ONNX's HardSigmoid (torch's hardsigmoid: alpha 1/6, beta 1/2)."""

    name = "hard_sigmoid"
    writes_out = True
    inplace = True

    def __init__(self, alpha: float = 1.0 / 6.0, beta: float = 0.5):
        self.alpha, self.beta = float(alpha), float(beta)

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        return x

    def forward(self, xp, x, out=None):
        t = x.dtype.type
        out = xp.multiply(x, t(self.alpha), out=out)
        out += t(self.beta)
        return xp.clip(out, t(0), t(1), out=out)

    def vjp(self, F, g, xs, y):
        (x,) = xs
        inner = F.add(F.mul(x, self.alpha), self.beta)
        inside = F.where(F.greater(inner, 0.0), F.where(F.less(inner, 1.0), F.mul(g, self.alpha), 0.0), 0.0)
        return (inside,)

    def cost(self, x: Spec) -> float:
        return 3.0 * numel(x)


class HardSwish(HardSigmoid):
    """x * hard_sigmoid(x), as ONNX's HardSwish and torch's hardswish (alpha 1/6, beta 1/2)."""

    name = "hard_swish"
    inplace = False  # forward reads x after writing out

    def forward(self, xp, x, out=None):
        gate = super().forward(xp, x, out=out)
        return xp.multiply(gate, x, out=gate)

    def vjp(self, F, g, xs, y):
        # torch's rule: 0 below the ramp, g above it, g (2 alpha x + beta) on it (ends included)
        (x,) = xs
        inner = F.add(F.mul(x, self.alpha), self.beta)
        slope = F.add(F.mul(x, 2.0 * self.alpha), self.beta)
        on = F.where(F.greater(inner, 1.0), g, F.mul(g, slope))
        return (F.where(F.less(inner, 0.0), 0.0, on),)

    def cost(self, x: Spec) -> float:
        return 4.0 * numel(x)


def hard_sigmoid(x, alpha: float = 1.0 / 6.0, beta: float = 0.5, name=None):
    """clip(alpha * x + beta, 0, 1): ONNX's HardSigmoid (defaults: torch's hardsigmoid)."""
    return HardSigmoid(alpha, beta)(x, name=name)


def hard_swish(x, name=None):
    """x * clip(x / 6 + 1/2, 0, 1), as torch.nn.functional.hardswish."""
    return HardSwish()(x, name=name)
