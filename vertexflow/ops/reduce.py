"""Reductions (sum, mean, max) and the normalisations over an axis (softmax, log_softmax)."""

from __future__ import annotations

from ..graph import Spec
from .base import Op, normalize_axes, numel, require_float, require_numeric


class Reduce(Op):
    writes_out = True

    def __init__(self, axis=None, keepdims: bool = False):
        self.axis = axis
        self.keepdims = bool(keepdims)

    def infer(self, x: Spec) -> Spec:
        require_numeric(x)
        axes = normalize_axes(self.axis, x.ndim)
        if self.keepdims:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return Spec(shape, x.dtype)

    def _axes(self, F, x) -> tuple[int, ...]:
        return normalize_axes(self.axis, F.ndim(x))

    def _kept(self, F, g, x):
        """g with the reduced axes put back as size 1."""
        return g if self.keepdims else F.expand_dims(g, self._axes(F, x))

    def cost(self, x: Spec) -> float:
        return float(numel(x))


class Sum(Reduce):
    name = "sum"

    def forward(self, xp, x, out=None):
        return xp.sum(x, axis=self.axis, keepdims=self.keepdims, out=out)

    def vjp(self, F, g, xs, y):
        (x,) = xs
        return (F.broadcast_like(self._kept(F, g, x), x),)


class Mean(Reduce):
    name = "mean"

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        return super().infer(x)

    def forward(self, xp, x, out=None):
        axes = normalize_axes(self.axis, x.ndim) if xp.__name__ == "numpy" and x.ndim >= 1 else ()
        # (all axes, a numpy scalar's mean, and an empty array's stay numpy's)
        trailing = 0 < len(axes) < x.ndim and axes == tuple(range(x.ndim - len(axes), x.ndim)) and x.size > 0
        if trailing and x.flags.c_contiguous and (out is None or out.flags.c_contiguous):
            from ..kernels import norm

            if norm.usable(x):  # over the last axes (a global average pool's (2, 3)): row sums in C jobs
                kept = x.shape[:x.ndim - len(axes)]
                rows = x.reshape(kept + (-1,))
                mean = norm.mean_last(rows, None if out is None else out.reshape(kept + (1,)))
                return out if out is not None else (mean.reshape(kept + (1,) * len(axes)) if self.keepdims
                                                    else mean.reshape(kept))
        return xp.mean(x, axis=self.axis, keepdims=self.keepdims, out=out)

    def vjp(self, F, g, xs, y):
        (x,) = xs
        spread = F.broadcast_like(self._kept(F, g, x), x)
        return (F.div(spread, F.count(x, self._axes(F, x), F.dtype(g))),)


class Max(Reduce):
    name = "max"

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind == "b":  # the max of booleans is their any()
            return Spec(super().infer(Spec(x.shape, "int8")).shape, x.dtype)
        return super().infer(x)

    def forward(self, xp, x, out=None):
        if x.size == 0:  # the max of nothing is the lowest value (ONNX's convention), not an error
            return xp.full(self.infer(Spec.of(x)).shape, _lowest(x.dtype), dtype=x.dtype)
        return xp.max(x, axis=self.axis, keepdims=self.keepdims, out=out)

    def vjp(self, F, g, xs, y):
        # Ties share the gradient evenly, as PyTorch's amax does.
        (x,) = xs
        axes = self._axes(F, x)
        winners = F.cast(F.equal(x, self._kept(F, y, x)), F.dtype(g))
        share = F.div(self._kept(F, g, x), F.apply(Sum(axes, keepdims=True), winners))
        return (F.mul(winners, share),)


class Min(Max):
    name = "min"

    def forward(self, xp, x, out=None):
        if x.size == 0:  # the min of nothing is the highest value (ONNX's convention)
            return xp.full(self.infer(Spec.of(x)).shape, _highest(x.dtype), dtype=x.dtype)
        return xp.min(x, axis=self.axis, keepdims=self.keepdims, out=out)


class Softmax(Op):
    name = "softmax"
    writes_out = True

    def __init__(self, axis: int = -1):
        self.axis = int(axis)

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        normalize_axes(self.axis, x.ndim)
        return x

    def forward(self, xp, x, out=None):
        if xp.__name__ == "numpy" and self.axis % x.ndim == x.ndim - 1:
            from ..kernels import norm

            if norm.usable(x):  # row by row: no slow max reduction, no broadcasts
                return norm.softmax_last(x, out)
        e = xp.subtract(x, xp.max(x, axis=self.axis, keepdims=True), out=out)
        xp.exp(e, out=e)
        return xp.divide(e, xp.sum(e, axis=self.axis, keepdims=True), out=e)

    def vjp(self, F, g, xs, y):
        gy = F.mul(g, y)
        return (F.sub(gy, F.mul(y, F.sum(gy, self.axis, keepdims=True))),)

    def cost(self, x: Spec) -> float:
        return 5.0 * numel(x)


class LogSoftmax(Softmax):
    name = "log_softmax"

    def forward(self, xp, x, out=None):
        shifted = xp.subtract(x, xp.max(x, axis=self.axis, keepdims=True), out=out)
        return xp.subtract(shifted, xp.log(xp.sum(xp.exp(shifted), axis=self.axis, keepdims=True)), out=shifted)

    def vjp(self, F, g, xs, y):
        return (F.sub(g, F.mul(F.exp(y), F.sum(g, self.axis, keepdims=True))),)


def _lowest(dtype):
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf
    if dtype.kind == "b":
        return False
    return np.iinfo(dtype).min


def _highest(dtype):
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.inf
    if dtype.kind == "b":
        return True
    return np.iinfo(dtype).max


def sum(x, axis=None, keepdims=False, name=None):  # noqa: A001 - numpy's name
    return Sum(axis, keepdims)(x, name=name)


def mean(x, axis=None, keepdims=False, name=None):
    return Mean(axis, keepdims)(x, name=name)


def max(x, axis=None, keepdims=False, name=None):  # noqa: A001 - numpy's name
    return Max(axis, keepdims)(x, name=name)


def min(x, axis=None, keepdims=False, name=None):  # noqa: A001 - numpy's name
    return Min(axis, keepdims)(x, name=name)


def softmax(x, axis=-1, name=None):
    return Softmax(axis)(x, name=name)


def log_softmax(x, axis=-1, name=None):
    return LogSoftmax(axis)(x, name=name)
