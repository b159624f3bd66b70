"""Layer normalization as one op: each row's statistics and its normalized, scaled, shifted values in one pass.

Written as vertices, a layer norm is nine of them (two means, broadcasts, a
square root, a division); as one op its forward walks each row once
(`kernels/norm.py` with numba, numpy passes otherwise) and its derivative rule
recomputes the row statistics with `F`, so second derivatives work as for
any composition.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, format_shape
from .base import Op, numel, require_float


class LayerNorm(Op):
    """(x - mean) / sqrt(var + eps) * weight + bias over x's last `dims` axes (weight, bias: those axes' shape)."""

    name = "layer_norm"
    writes_out = True

    def __init__(self, dims: int = 1, eps: float = 1e-5):
        self.dims = int(dims)
        self.eps = float(eps)
        if self.dims < 1:
            raise ShapeError(f"layer_norm normalizes at least one axis, got dims={dims}")

    def infer(self, x: Spec, weight: Spec, bias: Spec) -> Spec:
        require_float(x, weight, bias)
        if x.ndim < self.dims:
            raise ShapeError(f"layer_norm over {self.dims} axes of an input with {x.ndim}: {format_shape(x.shape)}")
        tail = x.shape[x.ndim - self.dims:]
        for what, s in (("weight", weight), ("bias", bias)):
            if s.shape != tail and not (None in tail and s.ndim == len(tail)):
                raise ShapeError(f"layer_norm's {what} must have the normalized shape {format_shape(tail)}, "
                                 f"got {format_shape(s.shape)}")
        return Spec(x.shape, np.result_type(x.dtype, weight.dtype, bias.dtype))

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(ndim - self.dims, ndim))

    def forward(self, xp, x, weight, bias, out=None):
        if xp is np:
            from ..kernels import norm

            if norm.usable(x) and x.dtype == weight.dtype == bias.dtype:
                n = int(np.prod(x.shape[x.ndim - self.dims:]))
                flat = x.reshape(*x.shape[:x.ndim - self.dims], n)
                result = norm.layer_norm_last(flat, weight.reshape(-1), bias.reshape(-1), self.eps,
                                              None if out is None else out.reshape(flat.shape))
                return result.reshape(x.shape)
        axes = self._axes(x.ndim)
        mu = x.mean(axis=axes, keepdims=True)
        centered = x - mu
        var = (centered * centered).mean(axis=axes, keepdims=True)
        value = centered / xp.sqrt(var + x.dtype.type(self.eps)) * weight + bias
        if out is None:
            return value
        xp.copyto(out, value)
        return out

    def vjp(self, F, g, xs, y):
        x, weight, bias = xs
        need_x, need_w, need_b = F.needs_input_grad
        axes = self._axes(F.ndim(x))
        n = F.count(x, axes, F.dtype(x))
        mu = F.div(F.sum(x, axes, keepdims=True), n)
        centered = F.sub(x, mu)
        var = F.div(F.sum(F.mul(centered, centered), axes, keepdims=True), n)
        rstd = F.power(F.add(var, self.eps), -0.5)
        xhat = F.mul(centered, rstd)
        gx = gw = gb = None
        if need_x:
            dxhat = F.mul(g, weight)
            mean_d = F.div(F.sum(dxhat, axes, keepdims=True), n)
            mean_dx = F.div(F.sum(F.mul(dxhat, xhat), axes, keepdims=True), n)
            gx = F.mul(rstd, F.sub(F.sub(dxhat, mean_d), F.mul(xhat, mean_dx)))
        if need_w:
            gw = F.sum_to(F.mul(g, xhat), weight)
        if need_b:
            gb = F.sum_to(g, bias)
        return (gx, gw, gb)

    def cost(self, x: Spec, weight: Spec, bias: Spec) -> float:
        return 6.0 * numel(x)
