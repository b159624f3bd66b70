"""Linear quantization: real values to integers of a narrow type and back, and the rescaling of an
integer product into a quantized output, as ONNX's QuantizeLinear, DequantizeLinear, QLinearMatMul
and QLinearConv compute them (round half to even, saturate to the type's range).

The scale and zero point come in already shaped to broadcast against the input (per tensor, per
axis, or repeated per block). An integer product itself is a float64 product of the integers minus
their zero points: exact for 8- and 16-bit operands (every partial sum is an integer below 2**53),
and computed by BLAS.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, as_dtype
from .base import Op, broadcast_shapes, numel


def integer_range(dtype) -> tuple[int, int]:
    """The smallest and largest value of an integer type (numpy's, or ml_dtypes' int4 and int2 kin)."""
    dtype = np.dtype(dtype)
    try:
        info = np.iinfo(dtype)
    except ValueError:
        import ml_dtypes

        info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


class Quantize(Op):
    """saturate(rint(x / scale) + zero_point) as `dtype` (an integer type)."""

    name = "quantize"

    def __init__(self, dtype):
        self.dtype = as_dtype(dtype)
        self.low, self.high = integer_range(self.dtype)

    def infer(self, x: Spec, scale: Spec, zero_point: Spec | None = None) -> Spec:
        if x.dtype.kind != "f" or scale.dtype.kind != "f":
            raise ShapeError(f"quantize needs floating-point values and scales, got {x.dtype} and {scale.dtype}")
        shapes = [x.shape, scale.shape] + ([zero_point.shape] if zero_point is not None else [])
        if broadcast_shapes(*shapes) != x.shape:
            raise ShapeError(f"quantize: scale {scale.shape} does not broadcast to the values' {x.shape}")
        return Spec(x.shape, self.dtype)

    def forward(self, xp, x, scale, zero_point=None):
        q = xp.rint(x / scale).astype(xp.int32)
        if zero_point is not None:
            q += zero_point.astype(xp.int32)
        return xp.clip(q, self.low, self.high).astype(self.dtype)

    def vjp(self, F, g, xs, y):
        return (None,) * len(xs)  # a step function: zero almost everywhere

    def cost(self, *specs: Spec) -> float:
        return 4.0 * numel(specs[0])


class Dequantize(Op):
    """(x - zero_point) * scale, as `dtype` (the scale's unless given)."""

    name = "dequantize"

    def __init__(self, dtype=None):
        self.dtype = None if dtype is None else as_dtype(dtype)

    def infer(self, x: Spec, scale: Spec, zero_point: Spec | None = None) -> Spec:
        if scale.dtype.kind != "f":
            raise ShapeError(f"dequantize needs floating-point scales, got {scale.dtype}")
        shapes = [x.shape, scale.shape] + ([zero_point.shape] if zero_point is not None else [])
        if broadcast_shapes(*shapes) != x.shape:
            raise ShapeError(f"dequantize: scale {scale.shape} does not broadcast to the values' {x.shape}")
        return Spec(x.shape, self.dtype or scale.dtype)

    def forward(self, xp, x, scale, zero_point=None):
        real = x.astype(xp.float32)
        if zero_point is not None:
            real = real - zero_point.astype(xp.float32)
        return (real * scale).astype(self.dtype or scale.dtype, copy=False)

    def vjp(self, F, g, xs, y):
        x, scale = xs[0], xs[1]
        if not (F.needs_input_grad and len(F.needs_input_grad) > 1 and F.needs_input_grad[1]):
            return (None,) * len(xs)
        real = F.cast(x, F.dtype(scale))
        if len(xs) > 2:
            real = F.sub(real, F.cast(xs[2], F.dtype(scale)))
        return (None, F.sum_to(F.mul(g, real), scale)) + (None,) * (len(xs) - 2)

    def cost(self, *specs: Spec) -> float:
        return 2.0 * numel(specs[0])


class Requantize(Op):
    """An integer accumulator rescaled into `dtype`: saturate(rint(acc * multiplier + zero_point)),
    computed in float64 (as numpy promotes int32 times float32)."""

    name = "requantize"

    def __init__(self, dtype):
        self.dtype = as_dtype(dtype)
        self.low, self.high = integer_range(self.dtype)

    def infer(self, acc: Spec, multiplier: Spec, zero_point: Spec | None = None) -> Spec:
        shapes = [acc.shape, multiplier.shape] + ([zero_point.shape] if zero_point is not None else [])
        return Spec(broadcast_shapes(*shapes), self.dtype)

    def forward(self, xp, acc, multiplier, zero_point=None):
        real = acc.astype(xp.float64) * multiplier.astype(xp.float64)
        if zero_point is not None:
            real += zero_point.astype(xp.float64)
        return xp.clip(xp.rint(real), self.low, self.high).astype(self.dtype)

    def vjp(self, F, g, xs, y):
        return (None,) * len(xs)

    def cost(self, *specs: Spec) -> float:
        return 4.0 * numel(specs[0])


def quantize(x, scale, zero_point=None, dtype="uint8", name=None):
    args = (x, scale) if zero_point is None else (x, scale, zero_point)
    return Quantize(dtype)(*args, name=name)


def dequantize(x, scale, zero_point=None, dtype=None, name=None):
    args = (x, scale) if zero_point is None else (x, scale, zero_point)
    return Dequantize(dtype)(*args, name=name)
