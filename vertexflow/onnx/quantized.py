"""ONNX's quantized ops: QuantizeLinear and DequantizeLinear (per tensor, per axis and per block;
the QDQ form onnxruntime's quantization tools write), DynamicQuantizeLinear, MatMulInteger,
ConvInteger, QLinearMatMul and QLinearConv, computed as the spec says: integer products exactly,
rounding half to even, saturation to the output type."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.quant import Dequantize, Quantize, Requantize, integer_range
from ..ops.shape import Take
from .convert import SaturatingCast, Unsupported, convolution, named, out_name


def _shaped(env, node, param, x, axis: int, block: int, what: str):
    """A scale or zero point shaped to broadcast against x: per tensor (a scalar), per axis (a vector
    along `axis`), or per block (each entry repeated `block` times along `axis`)."""
    if param.ndim == 0 or (param.ndim == 1 and param.shape[0] == 1):
        return ops.reshape(param, ())
    axis %= x.ndim
    if block:
        size = env.sizes(node.input[0], f"{node.op_type} per block: the input's sizes")[axis]
        index = np.repeat(np.arange(-(-size // block)), block)[:size]
        return Take(axis)(param, index)
    if param.ndim != 1:
        raise Unsupported(f"{what} of shape {param.shape} with block_size=0 (per tensor or per axis only)")
    shape = [1] * x.ndim
    shape[axis] = -1
    return ops.reshape(param, tuple(shape))


def _integer(dtype) -> bool:
    """An integer type: numpy's, or ml_dtypes' int4, uint4, int2 and uint2."""
    try:
        integer_range(dtype)
    except ValueError:
        return False
    return True


def _quantize_linear(env, node, xs, attrs):
    from onnx import helper

    x, scale = xs[0], xs[1]
    zero = xs[2] if xs.present(2) else None
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if zero is not None:
        dtype = zero.dtype
    elif "output_dtype" in attrs:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]))
    else:
        dtype = np.dtype(np.uint8)
    if "precision" in attrs:
        real = np.dtype(helper.tensor_dtype_to_np_dtype(attrs["precision"]))
        x, scale = ops.astype(x, real), ops.astype(scale, real)
    scale = _shaped(env, node, scale, x, axis, block, "scale")
    if dtype.name.startswith("float"):  # float8 and kin: a (saturating) cast of x / scale
        if dtype.name.startswith(("float4", "float6")) or not attrs.get("saturate", 1):
            return ops.astype(x / scale, dtype, name=out_name(env, node))
        return SaturatingCast(dtype)(x / scale, name=out_name(env, node))
    if not _integer(dtype):
        raise Unsupported(f"quantizing to {dtype}")
    args = [x, scale] + ([_shaped(env, node, zero, x, axis, block, "zero point")] if zero is not None else [])
    return Quantize(dtype)(*args, name=out_name(env, node))


def _dequantize_linear(env, node, xs, attrs):
    from onnx import helper

    x, scale = xs[0], xs[1]
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    dtype = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"]) if attrs.get("output_dtype") else None
    scale = _shaped(env, node, scale, x, axis, block, "scale")
    zero = None
    if xs.present(2) and _integer(x.dtype):  # float8 zero points are zero by the spec
        zero = _shaped(env, node, xs[2], x, axis, block, "zero point")
    args = [x, scale] + ([zero] if zero is not None else [])
    return Dequantize(dtype)(*args, name=out_name(env, node))


def _dynamic_quantize_linear(env, node, xs, attrs):
    """uint8 values, scale and zero point from the range of x (and 0): onnx's reference, step by step."""
    x = xs[0]
    f = np.float32
    top = ops.astype(ops.maximum(ops.max(x), np.zeros((), x.dtype)), f)
    bottom = ops.astype(ops.minimum(ops.min(x), np.zeros((), x.dtype)), f)
    spread = ops.where(ops.equal(top, bottom), np.ones((), f), top - bottom)
    scale = spread / np.asarray(255, f)
    zero = ops.round(ops.clip(np.zeros((), f) - bottom / scale, 0.0, 255.0))
    q = ops.astype(ops.clip(ops.round(ops.astype(x, f) / scale) + zero, 0.0, 255.0), np.uint8)
    return [named(q, env, node, 0), named(ops.astype(scale, x.dtype), env, node, 1),
            named(ops.astype(zero, np.uint8), env, node, 2)]


def _centered(x, zero, axis_shape=None):
    """x - zero_point as float64 (exact for 8- and 16-bit integers)."""
    real = ops.astype(x, np.float64)
    if zero is None:
        return real
    zero = ops.astype(zero, np.float64)
    if axis_shape is not None and zero.ndim == 1 and zero.shape[0] != 1:
        zero = ops.reshape(zero, axis_shape)
    elif zero.ndim == 1:
        zero = ops.reshape(zero, ())
    return real - zero


def _int32(real):
    return ops.astype(real, np.int32)


def _matmul_integer(env, node, xs, attrs):
    a = _centered(xs[0], xs[2] if xs.present(2) else None, (-1, 1))  # a's zero point: per row
    b = _centered(xs[1], xs[3] if xs.present(3) else None, (1, -1) if xs[1].ndim >= 2 else None)
    return ops.astype(ops.matmul(a, b), np.int32, name=out_name(env, node))


def _conv_integer(env, node, xs, attrs):
    w_shape = (-1,) + (1,) * (xs[1].ndim - 1)
    x = _centered(xs[0], xs[2] if xs.present(2) else None)
    w = _centered(xs[1], xs[3] if xs.present(3) else None, w_shape)
    return ops.astype(convolution(env, node, x, w, None, attrs), np.int32, name=out_name(env, node))


def _multiplier(*scales):
    """a_scale * b_scale / y_scale in the scales' own float type, as the reference computes it."""
    a, b, y = scales
    return a * b / y


def _qlinear_matmul(env, node, xs, attrs):
    a = _centered(xs[0], xs[2], (-1, 1))
    b = _centered(xs[3], xs[5], (1, -1) if xs[3].ndim >= 2 else None)
    acc = _int32(ops.matmul(a, b))
    a_scale, b_scale = ops.reshape(xs[1], (-1, 1)) if xs[1].ndim == 1 and xs[1].shape[0] != 1 else xs[1], xs[4]
    y_zero = xs[7] if xs.present(7) else None
    dtype = y_zero.dtype if y_zero is not None else xs[0].dtype
    args = [acc, _multiplier(a_scale, b_scale, xs[6])] + ([y_zero] if y_zero is not None else [])
    return Requantize(dtype)(*args, name=out_name(env, node))


def _qlinear_conv(env, node, xs, attrs):
    w_shape = (-1,) + (1,) * (xs[3].ndim - 1)
    x = _centered(xs[0], xs[2])
    w = _centered(xs[3], xs[5], w_shape)
    bias = ops.astype(xs[8], np.float64) if xs.present(8) else None
    acc = _int32(convolution(env, node, x, w, bias, attrs))
    w_scale = xs[4]
    if w_scale.ndim == 1 and w_scale.shape[0] != 1:  # one scale per output channel
        w_scale = ops.reshape(w_scale, (1, -1) + (1,) * (xs[0].ndim - 2))
    y_zero = xs[7] if xs.present(7) else None
    dtype = y_zero.dtype if y_zero is not None else xs[0].dtype
    args = [acc, _multiplier(xs[1], w_scale, xs[6])] + ([y_zero] if y_zero is not None else [])
    return Requantize(dtype)(*args, name=out_name(env, node))


_CONV = {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}

CONVERTERS = {
    "QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
    "DynamicQuantizeLinear": _dynamic_quantize_linear, "MatMulInteger": _matmul_integer,
    "ConvInteger": _conv_integer, "QLinearMatMul": _qlinear_matmul, "QLinearConv": _qlinear_conv,
}

ALLOWED_ATTRS = {
    "QuantizeLinear": {"axis", "block_size", "saturate", "output_dtype", "precision"},
    "DequantizeLinear": {"axis", "block_size", "output_dtype"},
    "ConvInteger": _CONV, "QLinearConv": _CONV,
}
