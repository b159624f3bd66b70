"""ONNX's elementwise ops beyond the basic ones: trigonometric and hyperbolic functions, rounding,
NaN and infinity tests, bitwise ops and shifts, the smaller activations (Celu, ThresholdedRelu,
Shrink, Swish), bit casts, and the values made from sizes alone (EyeLike, window functions)."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import ShapeError
from ..graph import Spec
from .convert import Unsupported, named, out_name


def _unary(fn):
    return lambda env, node, xs, attrs: fn(xs[0], name=out_name(env, node))


def _binary(fn):
    return lambda env, node, xs, attrs: fn(xs[0], xs[1], name=out_name(env, node))


def _isinf(env, node, xs, attrs):
    return ops.isinf(xs[0], bool(attrs.get("detect_positive", 1)), bool(attrs.get("detect_negative", 1)),
                     name=out_name(env, node))


def _bit_shift(env, node, xs, attrs):
    direction = attrs.get("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise Unsupported(f"direction={direction!r} (LEFT or RIGHT)")
    return (ops.left_shift if direction == "LEFT" else ops.right_shift)(xs[0], xs[1], name=out_name(env, node))


def _scalar(x, value):
    return np.asarray(value, dtype=x.dtype)


def _celu(env, node, xs, attrs):
    x = xs[0]
    alpha = _scalar(x, attrs.get("alpha", 1.0))
    negative = (ops.exp(ops.minimum(x, _scalar(x, 0)) / alpha) - _scalar(x, 1)) * alpha
    return named(ops.maximum(x, _scalar(x, 0)) + ops.minimum(negative, _scalar(x, 0)), env, node)


def _thresholded_relu(env, node, xs, attrs):
    x = xs[0]
    return ops.where(x > _scalar(x, attrs.get("alpha", 1.0)), x, _scalar(x, 0), name=out_name(env, node))


def _shrink(env, node, xs, attrs):
    x = xs[0]
    lambd, bias = attrs.get("lambd", 0.5), attrs.get("bias", 0.0)
    low = ops.where(x < _scalar(x, -lambd), x + _scalar(x, bias), _scalar(x, 0))
    return ops.where(x > _scalar(x, lambd), x - _scalar(x, bias), low, name=out_name(env, node))


def _swish(env, node, xs, attrs):
    x = xs[0]
    alpha = attrs.get("alpha", 1.0)
    return named(x * ops.sigmoid(x if alpha == 1.0 else x * _scalar(x, alpha)), env, node)


class BitCast(ops.Op):
    """The same bytes read as another dtype of the same width (little endian, as ONNX says)."""

    name = "bitcast"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def infer(self, x: Spec) -> Spec:
        if x.dtype.itemsize != self.dtype.itemsize:
            raise ShapeError(f"a bit cast from {x.dtype} to {self.dtype} changes the width")
        return Spec(x.shape, self.dtype)

    def forward(self, xp, x):
        little = x.astype(x.dtype.newbyteorder("<"), copy=False)
        return little.view(self.dtype.newbyteorder("<")).astype(self.dtype, copy=False)

    def vjp(self, F, g, xs, y):
        return (None,)


def _bitcast(env, node, xs, attrs):
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(attrs["to"])
    if np.dtype(dtype).itemsize != xs[0].dtype.itemsize:
        raise Unsupported(f"to={np.dtype(dtype)} has another width than the input's {xs[0].dtype}")
    return BitCast(dtype)(xs[0], name=out_name(env, node))


def _eye_like(env, node, xs, attrs):
    from onnx import helper

    x = xs[0]
    rows, cols = env.sizes(node.input[0], "EyeLike's input sizes")
    dtype = helper.tensor_dtype_to_np_dtype(attrs["dtype"]) if "dtype" in attrs else x.dtype
    return np.eye(rows, cols, int(attrs.get("k", 0)), dtype=dtype)


def _window(kind: str):
    coefficients = {"HannWindow": (0.5, 0.5, 0.0), "HammingWindow": (25 / 46, 21 / 46, 0.0),
                    "BlackmanWindow": (0.42, 0.5, 0.08)}[kind]

    def convert(env, node, xs, attrs):
        from onnx import helper

        size = int(np.asarray(xs.value(0, f"{kind}'s size")))
        n = size if attrs.get("periodic", 1) else size - 1
        k = np.arange(size, dtype=np.float64)
        a0, a1, a2 = coefficients
        with np.errstate(divide="ignore", invalid="ignore"):
            w = a0 - a1 * np.cos(2 * np.pi * k / n) + a2 * np.cos(4 * np.pi * k / n)
        return w.astype(helper.tensor_dtype_to_np_dtype(attrs.get("output_datatype", 1)))

    return convert


CONVERTERS = {
    "Sin": _unary(ops.sin), "Cos": _unary(ops.cos), "Tan": _unary(ops.tan), "Asin": _unary(ops.arcsin),
    "Acos": _unary(ops.arccos), "Atan": _unary(ops.arctan), "Sinh": _unary(ops.sinh), "Cosh": _unary(ops.cosh),
    "Asinh": _unary(ops.arcsinh), "Acosh": _unary(ops.arccosh), "Atanh": _unary(ops.arctanh),
    "Floor": _unary(ops.floor), "Ceil": _unary(ops.ceil), "Round": _unary(ops.round),
    "IsNaN": _unary(ops.isnan), "IsInf": _isinf,
    "BitwiseAnd": _binary(ops.bitwise_and), "BitwiseOr": _binary(ops.bitwise_or),
    "BitwiseXor": _binary(ops.bitwise_xor), "BitwiseNot": _unary(ops.bitwise_not), "BitShift": _bit_shift,
    "Celu": _celu, "ThresholdedRelu": _thresholded_relu, "Shrink": _shrink, "Swish": _swish,
    "BitCast": _bitcast, "EyeLike": _eye_like,
    **{kind: _window(kind) for kind in ("HannWindow", "HammingWindow", "BlackmanWindow")},
}

ALLOWED_ATTRS = {
    "IsInf": {"detect_positive", "detect_negative"}, "BitShift": {"direction"}, "Celu": {"alpha"},
    "ThresholdedRelu": {"alpha"}, "Shrink": {"bias", "lambd"}, "Swish": {"alpha"}, "BitCast": {"to"},
    "EyeLike": {"dtype", "k"},
    **{kind: {"periodic", "output_datatype"} for kind in ("HannWindow", "HammingWindow", "BlackmanWindow")},
}
