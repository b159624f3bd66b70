"""ONNX nodes as vertexflow vertices: one converter per op type, and the rules of what is supported.

A converter `convert(env, node, xs, attrs)` adds the vertices of one ONNX node
and returns its output: a vertex, a numpy array (a value known when the graph
is built, such as the result of `Shape` on a tensor of known shape), or a list
of those for a node with several outputs. `xs[i]` is the vertex of input i
(None where the input is absent); `env.value(name, what)` is an input's value
when the converter needs it to build (a Reshape's shape, Slice's bounds), and
raises `NeedsValue` when that value is only known at run time: the importer
then builds the graph for the fed values instead (see `importer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import ops
from ..errors import ModelFileError
from ..graph import Graph, Node, Spec
from ..ops.base import broadcast_shapes
from ..ops.shape import ConstantPad, Identity, ReshapeLike, Take


class NeedsValue(Exception):
    """Building needs `tensor`'s value (or, with `shape=True`, its sizes), known only at run time."""

    def __init__(self, tensor: str, what: str, shape: bool = False):
        super().__init__(f"{what} ({tensor!r}) is known only at run time")
        self.tensor, self.what, self.shape = tensor, what, shape


class Unsupported(Exception):
    """This node, as built, cannot be imported (the reason is the message)."""


class Env:
    """The graph being built: tensor name -> vertex, and the values of tensors known at build time."""

    def __init__(self, graph: Graph, opset: int, max_constant_bytes: int = 2**30):
        self.graph = graph
        self.opset = opset
        self.max_constant_bytes = max_constant_bytes  # the most a value computed at build time may take
        self.nodes: dict[str, Node] = {}
        self.known: dict[str, np.ndarray] = {}
        self.trainable: set[str] = set()  # float initializers: params, never folded into constants

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            value = self.known[name]
            if not isinstance(value, np.ndarray):  # a sequence or optional (onnx/sequences.py)
                raise Unsupported(f"{name!r} is a sequence or optional, where a tensor is needed")
            self.nodes[name] = self.graph.const(value, name=self.graph.fresh_name(name))
        return self.nodes[name]

    def keep(self, name: str, result) -> None:
        """Record what a converter made for tensor `name`: a vertex, or a value known now."""
        from .sequences import BUILD_TIME

        if isinstance(result, Node):
            self.nodes[name] = result
        else:
            self.known[name] = result if isinstance(result, BUILD_TIME) else np.asarray(result)

    def has_value(self, name: str) -> bool:
        return name in self.known

    def value(self, name: str, what: str) -> np.ndarray:
        if name not in self.known:
            raise NeedsValue(name, what)
        return self.known[name]

    def sizes(self, name: str, what: str) -> tuple[int, ...]:
        """The tensor's shape, every size known (else NeedsValue for its shape)."""
        shape = self.known[name].shape if name in self.known else self.nodes[name].shape
        if None in shape:
            raise NeedsValue(name, what, shape=True)
        return tuple(shape)


class Inputs:
    """A node's inputs as vertices, made only when a converter asks (no constants nobody reads)."""

    def __init__(self, env: Env, node):
        self.env, self.names = env, list(node.input)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Node | None:
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        name = self.names[i] if i < len(self.names) else ""
        return self.env.node(name) if name else None

    def present(self, i: int) -> bool:
        return i < len(self.names) and bool(self.names[i])

    def value(self, i: int, what: str, default=None):
        if not self.present(i):
            return default
        return self.env.value(self.names[i], what)


def out_name(env: Env, node, k: int = 0) -> str:
    """The vertex name for output k: the ONNX tensor name, made unique if it must be."""
    return env.graph.fresh_name(node.output[k] or f"{node.op_type}_{k}")


def named(vertex: Node, env: Env, node, k: int = 0) -> Node:
    """Give a composed conversion's last vertex the ONNX output's name (an identity vertex)."""
    return Identity()(vertex, name=out_name(env, node, k))


# -- elementwise ----------------------------------------------------------------------------------
def _unary(fn):
    return lambda env, node, xs, attrs: fn(xs[0], name=out_name(env, node))


def _binary(fn):
    return lambda env, node, xs, attrs: fn(xs[0], xs[1], name=out_name(env, node))


def _composed(fn):
    """A converter whose vertices come from fn(x, attrs), the last one named after the output."""
    return lambda env, node, xs, attrs: named(fn(xs[0], attrs), env, node)


def _variadic(fn):
    def convert(env, node, xs, attrs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return named(out, env, node)

    return convert


def _mean(env, node, xs, attrs):
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return named(total / np.asarray(len(xs), dtype=xs[0].dtype), env, node)


def _pow(env, node, xs, attrs):
    # ONNX keeps the base's type; numpy would promote float32 ** int64 to float64.
    base, exponent = xs[0], xs[1]
    if exponent.dtype != base.dtype:
        exponent = ops.astype(exponent, base.dtype)
    return ops.power(base, exponent, name=out_name(env, node))


class TruncDivide(ops.Op):
    """ONNX's integer Div: the quotient rounded toward zero (C's), not numpy's floor."""

    name = "trunc_div"

    def infer(self, a, b):
        return Spec(broadcast_shapes(a.shape, b.shape), np.result_type(a.dtype, b.dtype))

    def forward(self, xp, a, b):
        q = xp.floor_divide(a, b)
        # floor differs from truncation when the signs differ and the division is inexact
        return q + ((xp.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)

    def vjp(self, F, g, xs, y):
        return (None, None)


def _div(env, node, xs, attrs):
    if xs[0].dtype.kind in "iu" and xs[1].dtype.kind in "iu":
        return TruncDivide()(xs[0], xs[1], name=out_name(env, node))
    return ops.divide(xs[0], xs[1], name=out_name(env, node))


def _mod(env, node, xs, attrs):
    return ops.remainder(xs[0], xs[1], fmod=bool(attrs.get("fmod", 0)), name=out_name(env, node))


class SaturatingCast(ops.Op):
    """A cast to an 8-bit float that clamps out-of-range values and infinities to the largest finite
    one (ONNX's saturate=1), where numpy's (ml_dtypes') conversion gives inf or NaN."""

    name = "saturating_cast"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def infer(self, x):
        return Spec(x.shape, self.dtype)

    def forward(self, xp, x):
        import ml_dtypes

        top = float(ml_dtypes.finfo(self.dtype).max)
        return np.clip(x.astype(np.float32), -top, top).astype(self.dtype)  # NaN stays NaN

    def vjp(self, F, g, xs, y):
        return (None,)


def _to_dtype(env, node, xs, attrs, dtype):
    dtype = np.dtype(dtype)
    if dtype.name.startswith("float8") and attrs.get("saturate", 1) and xs[0].dtype.kind == "f":
        return SaturatingCast(dtype)(xs[0], name=out_name(env, node))
    return ops.astype(xs[0], dtype, name=out_name(env, node))


def _cast(env, node, xs, attrs):
    from onnx import helper

    return _to_dtype(env, node, xs, attrs, helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _cast_like(env, node, xs, attrs):
    return _to_dtype(env, node, xs, attrs, xs[1].dtype)


def _where(env, node, xs, attrs):
    return ops.where(xs[0], xs[1], xs[2], name=out_name(env, node))


def _clip(env, node, xs, attrs):
    x = xs[0]
    low, high = attrs.get("min"), attrs.get("max")
    if xs.present(1):
        low = xs[1] if not env.has_value(xs.names[1]) else env.known[xs.names[1]]
    if xs.present(2):
        high = xs[2] if not env.has_value(xs.names[2]) else env.known[xs.names[2]]
    if not isinstance(low, Node) and not isinstance(high, Node) and x.dtype.kind == "f":
        # constant bounds (ReLU6, a clamp): one pass
        bounds = [None if b is None else float(np.asarray(b)) for b in (low, high)]
        if bounds[0] is None or bounds[1] is None or bounds[0] <= bounds[1]:
            return ops.clip(x, bounds[0], bounds[1], name=out_name(env, node))
    out = x
    if low is not None:
        out = ops.maximum(out, low if isinstance(low, Node) else np.asarray(low, dtype=x.dtype))
    if high is not None:
        out = ops.minimum(out, high if isinstance(high, Node) else np.asarray(high, dtype=x.dtype))
    return named(out, env, node)


def _hard_sigmoid_node(env, node, xs, attrs):
    return ops.hard_sigmoid(xs[0], attrs.get("alpha", 0.2), attrs.get("beta", 0.5), name=out_name(env, node))


def _elu(x, attrs):
    alpha = attrs.get("alpha", 1.0)
    return ops.where(x > 0, x, (ops.exp(ops.minimum(x, 0.0)) - 1.0) * alpha)


def _selu(x, attrs):
    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return ops.where(x > 0, x * gamma, (ops.exp(ops.minimum(x, 0.0)) * alpha - alpha) * gamma)


def _softplus(x, attrs):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|): no overflow for large x
    return ops.maximum(x, 0.0) + ops.log(ops.exp(-ops.abs(x)) + 1.0)


def _prelu(env, node, xs, attrs):
    x, slope = xs[0], xs[1]
    return named(ops.where(x < 0, x * slope, x), env, node)


def _leaky(env, node, xs, attrs):
    return ops.leaky_relu(xs[0], attrs.get("alpha", 0.01), name=out_name(env, node))


def _gelu(env, node, xs, attrs):
    return ops.gelu(xs[0], attrs.get("approximate", "none"), name=out_name(env, node))


# -- linear algebra and networks ------------------------------------------------------------------
def _gemm(env, node, xs, attrs):
    a, b = xs[0], xs[1]
    if attrs.get("transA", 0):
        a = ops.transpose(a)
    if attrs.get("transB", 0):
        b = ops.transpose(b)
    out = ops.matmul(a, b)
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if xs.present(2) and beta != 0.0:
        out = out + (xs[2] if beta == 1.0 else xs[2] * beta)
    return named(out, env, node)


def _spatial(x: Node, attrs, what: str, supported=(1, 2)) -> int:
    """Spatial dimensions of an N-D image input, refused unless `supported`."""
    dims = x.ndim - 2
    kernel = attrs.get("kernel_shape")
    if kernel is not None and len(kernel) != dims:
        raise Unsupported(f"kernel_shape {kernel} for a {dims}-D input")
    if dims not in supported:
        listed = ", ".join(f"{d}-D" for d in supported[:-1]) + f" and {supported[-1]}-D"
        raise Unsupported(f"only {listed} {what} are supported, not {dims}-D")
    return dims


def _window_pads(env, node, x: Node, kernel, strides, dilations, attrs) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis from pads or auto_pad (SAME_* needs the input's sizes)."""
    dims = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = list(attrs.get("pads", [0] * 2 * dims)) if auto == "NOTSET" else [0] * 2 * dims
        return [(int(pads[i]), int(pads[i + dims])) for i in range(dims)]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto!r}")
    sizes = env.sizes(node.input[0], f"{node.op_type} with auto_pad={auto}: the input's sizes")[2:]
    out = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return out


def _as_2d(x: Node, dims: int) -> Node:
    return ops.expand_dims(x, 2) if dims == 1 else x


def _from_2d(y: Node, dims: int) -> Node:
    return ops.squeeze(y, 2) if dims == 1 else y


def _pad_spatial(x: Node, pads, fill) -> Node:
    return ConstantPad([(0, 0), (0, 0)] + [tuple(p) for p in pads], fill)(x)


def _geometry(x, w, attrs, what: str, supported=(1, 2)) -> tuple[int, list, list, list]:
    """(spatial dimensions, kernel, strides, dilations) of a convolution node."""
    dims = _spatial(x, attrs, what, supported)
    return (dims, list(w.shape[2:]), list(attrs.get("strides", [1] * dims)),
            list(attrs.get("dilations", [1] * dims)))


def _conv(env, node, xs, attrs):
    return named(convolution(env, node, xs[0], xs[1], xs[2] if xs.present(2) else None, attrs), env, node)


def convolution(env, node, x, w, bias, attrs) -> Node:
    """The vertices of an ONNX convolution of x by w (plus bias), with the node's attributes."""
    dims, kernel, strides, dilations = _geometry(x, w, attrs, "convolutions", (1, 2, 3))
    pads = _window_pads(env, node, x, kernel, strides, dilations, attrs)
    if dims == 3:
        return _volume_convolution(env, node, x, w, bias, strides, dilations, pads, int(attrs.get("group", 1)))
    x2, w2 = _as_2d(x, dims), _as_2d(w, dims)
    if dims == 1:
        strides, dilations, pads = [1] + strides, [1] + dilations, [(0, 0)] + pads
    symmetric = all(a == b for a, b in pads)
    if not symmetric:
        x2 = _pad_spatial(x2, pads, 0.0)
    out = ops.conv2d(x2, w2, stride=tuple(strides), padding=tuple(a for a, _ in pads) if symmetric else 0,
                     dilation=tuple(dilations), groups=int(attrs.get("group", 1)))
    if bias is not None:
        out = out + ops.reshape(bias, (-1, 1, 1))
    return _from_2d(out, dims)


def _volume_convolution(env, node, x, w, bias, strides, dilations, pads, groups: int) -> Node:
    """A 3-D convolution as 2-D ones: for each depth tap of the kernel, the depth slices it reads,
    stacked into the batch, convolved with that tap's 2-D kernel; the taps summed."""
    _, channels, depth, height, width = env.sizes(node.input[0], "a 3-D convolution's input sizes")
    taps = w.shape[2]
    (front, back), plane = pads[0], pads[1:]
    if front or back:
        x = ConstantPad([(0, 0), (0, 0), (front, back), (0, 0), (0, 0)], 0.0)(x)
    outs = (depth + front + back - dilations[0] * (taps - 1) - 1) // strides[0] + 1
    symmetric = all(a == b for a, b in plane)
    total = None
    for t in range(taps):
        start = t * dilations[0]
        part = ops.getitem(x, (slice(None), slice(None), slice(start, start + (outs - 1) * strides[0] + 1, strides[0])))
        part = ops.reshape(ops.transpose(part, (0, 2, 1, 3, 4)), (-1, channels, height, width))
        if not symmetric:
            part = _pad_spatial(part, plane, 0.0)
        term = ops.conv2d(part, ops.getitem(w, (slice(None), slice(None), t)), stride=tuple(strides[1:]),
                          padding=tuple(a for a, _ in plane) if symmetric else 0, dilation=tuple(dilations[1:]),
                          groups=groups)
        total = term if total is None else total + term
    _, out_channels, out_h, out_w = total.shape
    out = ops.transpose(ops.reshape(total, (-1, outs, out_channels, out_h, out_w)), (0, 2, 1, 3, 4))
    if bias is not None:
        out = out + ops.reshape(bias, (-1, 1, 1, 1))
    return out


def _conv_transpose(env, node, xs, attrs):
    x, w = xs[0], xs[1]
    dims, kernel, strides, dilations = _geometry(x, w, attrs, "transposed convolutions")
    extra = list(attrs.get("output_padding", [0] * dims))
    auto = attrs.get("auto_pad", "NOTSET")
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        sizes = env.sizes(node.input[0], "ConvTranspose with output_shape or auto_pad: the input's sizes")[2:]
        wanted = list(attrs["output_shape"])[-dims:] if "output_shape" in attrs else [h * s for h, s in zip(sizes, strides)]
        pads = []
        for h, k, s, d, op, want in zip(sizes, kernel, strides, dilations, extra, wanted):
            total = s * (h - 1) + op + (k - 1) * d + 1 - want  # the spec's total padding
            half = total // 2
            pads.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    else:
        flat = list(attrs.get("pads", [0] * 2 * dims))
        pads = [(int(flat[i]), int(flat[i + dims])) for i in range(dims)]
    x2, w2 = _as_2d(x, dims), _as_2d(w, dims)
    if dims == 1:
        strides, dilations, extra, pads = [1] + strides, [1] + dilations, [0] + extra, [(0, 0)] + pads
    # Pads crop the full transposed output: symmetric ones are the op's padding, the rest a slice.
    # A negative pad (an output_shape past the natural size) adds cells no tap reaches: zeros.
    common = [max(min(a, b), 0) for a, b in pads]
    out = ops.conv_transpose2d(x2, w2, stride=tuple(strides), padding=tuple(common), output_padding=tuple(extra),
                               dilation=tuple(dilations), groups=int(attrs.get("group", 1)))
    rest = [(a - c, b - c) for (a, b), c in zip(pads, common)]
    if any(a > 0 or b > 0 for a, b in rest):
        out = ops.getitem(out, (slice(None), slice(None)) + tuple(
            slice(max(a, 0), -b if b > 0 else None) for a, b in rest))
    if any(a < 0 or b < 0 for a, b in rest):
        out = ConstantPad([(0, 0), (0, 0)] + [(max(-a, 0), max(-b, 0)) for a, b in rest], 0.0)(out)
    if xs.present(2):
        out = out + ops.reshape(xs[2], (-1, 1, 1))
    return named(_from_2d(out, dims), env, node)


def _instance_norm(env, node, xs, attrs):
    x = xs[0]
    axes = tuple(range(2, x.ndim))
    eps = np.asarray(attrs.get("epsilon", 1e-5), dtype=x.dtype)
    shape = (-1,) + (1,) * (x.ndim - 2)
    mu = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mu
    out = centered / ops.sqrt(ops.mean(centered * centered, axis=axes, keepdims=True) + eps)
    return named(out * ops.reshape(xs[1], shape) + ops.reshape(xs[2], shape), env, node)


def _trilu(env, node, xs, attrs):
    x = xs[0]
    k = int(np.asarray(xs.value(1, "Trilu's k", 0)))
    rows, cols = env.sizes(node.input[0], "Trilu's input sizes")[-2:]
    keep = (np.triu if attrs.get("upper", 1) else np.tril)(np.ones((rows, cols), dtype=bool), k)
    return ops.where(keep, x, np.zeros((), dtype=x.dtype), name=out_name(env, node))


def _pool(kind: str):
    """MaxPool, AveragePool or LpPool ("lp": the p-norm of each window) over 1, 2 or 3 spatial axes."""

    def convert(env, node, xs, attrs):
        x = xs[0]
        dims = x.ndim - 2
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != dims or dims not in (1, 2, 3):
            raise Unsupported(f"kernel_shape {kernel} for a {dims}-D input (1-D, 2-D and 3-D pools are supported)")
        strides = list(attrs.get("strides", [1] * dims))
        dilations = list(attrs.get("dilations", [1] * dims))
        pads = _window_pads(env, node, x, kernel, strides, dilations, attrs)
        ceil = bool(attrs.get("ceil_mode", 0))
        include_pad = bool(attrs.get("count_include_pad", 0))
        p = attrs.get("p", 2)
        source = ops.power(ops.abs(x), np.asarray(p, dtype=x.dtype)) if kind == "lp" else x
        mode = "sum" if kind == "lp" else kind

        def sizes():
            return env.sizes(node.input[0], f"{node.op_type} with these attributes: the input's sizes")[2:]

        if dims == 3:  # over (H, W) with D folded into the channels, then over D with H x W flattened
            n, c, d, h, w = env.sizes(node.input[0], f"{node.op_type} over 3-D: the input's sizes")
            inner = pool_window(mode, ops.reshape(source, (n, c * d, h, w)), (h, w), kernel[1:], strides[1:],
                                dilations[1:], pads[1:], ceil, include_pad)
            h2, w2 = inner.shape[2:]
            outer = pool_window(mode, ops.reshape(inner, (n, c, d, h2 * w2)), (d, h2 * w2), [kernel[0], 1],
                                [strides[0], 1], [dilations[0], 1], [pads[0], (0, 0)], ceil, include_pad)
            out = ops.reshape(outer, (n, c, outer.shape[2], h2, w2))
        else:
            x2 = _as_2d(source, dims)
            if dims == 1:
                kernel, strides, dilations, pads = [1] + kernel, [1] + strides, [1] + dilations, [(0, 0)] + pads
            out = _from_2d(pool_window(mode, x2, sizes, kernel, strides, dilations, pads, ceil, include_pad), dims)
        if kind == "lp":
            out = ops.power(out, np.asarray(1.0 / p, dtype=x.dtype))
        if kind == "max" and len(node.output) > 1 and node.output[1]:
            from .layers import MaxPoolIndices

            if dims != 2:
                raise Unsupported(f"the Indices output of a {dims}-D pool (2-D only)")
            sizes_hw = sizes()
            full = [(a, b + max((-(-(s + a + b - d * (k - 1) - 1) // st) if ceil else (s + a + b - d * (k - 1) - 1) // st)
                                * st + d * (k - 1) + 1 - (s + a + b), 0))
                    for s, k, st, d, (a, b) in zip(sizes_hw, kernel, strides, dilations, pads)]
            indices = MaxPoolIndices(kernel, strides, full, dilations, attrs.get("storage_order", 0))(x)
            return [named(out, env, node), named(indices, env, node, 1)]
        return named(out, env, node)

    return convert


def pool_window(kind: str, x2, sizes, kernel, strides, dilations, pads, ceil: bool, include_pad: bool):
    """A 2-D max ("max"), average ("avg") or sum ("sum") pool of NCHW x2. `sizes` are its (H, W), or a
    function giving them: asked only when the windows need them (asymmetric padding, ceil_mode, an
    average that leaves padding out)."""
    symmetric = all(a == b for a, b in pads)
    plain = symmetric and not ceil and (kind == "max" or include_pad or not any(a for a, _ in pads))
    area = kernel[0] * kernel[1]
    if plain:
        padding = tuple(a for a, _ in pads)
        if kind == "max":
            return ops.max_pool2d(x2, tuple(kernel), tuple(strides), padding, tuple(dilations))
        out = ops.avg_pool2d(x2, tuple(kernel), tuple(strides), padding, tuple(dilations))
        return out * np.asarray(area, dtype=x2.dtype) if kind == "sum" else out
    # Asymmetric padding, ceil_mode, or an average that leaves padding out: pad explicitly (past the
    # end for ceil_mode's last windows), pool without padding, and for an average divide by each
    # window's own count (a constant of the input's sizes).
    sizes = sizes() if callable(sizes) else sizes
    extra, counts = [], []
    for size, k, s, d, (a, b) in zip(sizes, kernel, strides, dilations, pads):
        span = size + a + b - d * (k - 1) - 1
        outs = (-(-span // s) if ceil else span // s) + 1
        if ceil and (outs - 1) * s >= size + a:  # the last window would start in the end padding
            outs -= 1
        need = (outs - 1) * s + d * (k - 1) + 1 - (size + a + b)
        extra.append(max(need, 0))
        cells = (np.arange(outs) * s - a)[:, None] + np.arange(k) * d  # each window's cells
        # padded cells count with count_include_pad, cells past the padding (ceil_mode) never
        low, high = (-a, size + b) if include_pad else (0, size)
        counts.append(((cells >= low) & (cells < high)).sum(axis=1))
    full = [(a, b + e) for (a, b), e in zip(pads, extra)]
    if kind == "max":
        fill = -np.inf if x2.dtype.kind == "f" else np.iinfo(x2.dtype).min
        return ops.max_pool2d(_pad_spatial(x2, full, fill), tuple(kernel), tuple(strides), 0, tuple(dilations))
    out = ops.avg_pool2d(_pad_spatial(x2, full, 0.0), tuple(kernel), tuple(strides), 0, tuple(dilations))
    if kind == "sum":
        return out * np.asarray(area, dtype=x2.dtype)
    divisor = np.multiply.outer(counts[0], counts[1])
    if np.any(divisor != area):
        out = out * (area / np.maximum(divisor, 1)).astype(x2.dtype)
    return out


def _global_pool(fn):
    def convert(env, node, xs, attrs):
        x = xs[0]
        return fn(x, axis=tuple(range(2, x.ndim)), keepdims=True, name=out_name(env, node))

    return convert


def _batch_norm(env, node, xs, attrs):
    x, scale, bias, mean, var = xs[:5]
    eps = attrs.get("epsilon", 1e-5)
    shape = (-1,) + (1,) * (x.ndim - 2)
    training = attrs.get("training_mode", 0)
    if training:  # the batch's own statistics, and the running ones moved toward them
        axes = (0,) + tuple(range(2, x.ndim))
        batch_mean = ops.mean(x, axis=axes)
        centered = x - ops.reshape(batch_mean, shape)
        batch_var = ops.mean(centered * centered, axis=axes)
        momentum = np.asarray(attrs.get("momentum", 0.9), dtype=x.dtype)
        running_mean = mean * momentum + batch_mean * (1 - momentum)
        running_var = var * momentum + batch_var * (1 - momentum)
        mean, var = batch_mean, batch_var
    inv = ops.reshape(scale / ops.sqrt(var + np.asarray(eps, dtype=var.dtype)), shape)
    out = (x - ops.reshape(mean, shape)) * inv + ops.reshape(bias, shape)
    if not training:
        return named(out, env, node)
    outs = [named(out, env, node)]
    for k, value in ((1, running_mean), (2, running_var)):
        if len(node.output) > k and node.output[k]:
            outs.append(named(value, env, node, k))
    return outs


def _layer_norm(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    if len([o for o in node.output if o]) == 1 and x.dtype.kind == "f" and xs[1].dtype == x.dtype and \
            (not xs.present(2) or xs[2].dtype == x.dtype) and None not in x.shape[axis:]:
        tail = tuple(x.shape[axis:])
        scale, shift = xs[1], xs[2] if xs.present(2) else None
        if tuple(scale.shape) == tail and (shift is None or tuple(shift.shape) == tail):
            return ops.layer_norm(x, axes, float(attrs.get("epsilon", 1e-5)), scale, shift,
                                  name=out_name(env, node))
    eps = np.asarray(attrs.get("epsilon", 1e-5), dtype=x.dtype)
    mu = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mu
    inv = 1.0 / ops.sqrt(ops.mean(centered * centered, axis=axes, keepdims=True) + eps)
    out = centered * inv * xs[1]
    if xs.present(2):
        out = out + xs[2]
    outputs = [named(out, env, node)]
    if len(node.output) > 1 and node.output[1]:
        outputs.append(named(mu, env, node, 1))
    if len(node.output) > 2 and node.output[2]:
        outputs.append(named(inv, env, node, 2))
    return outputs


def _softmax(fn):
    def convert(env, node, xs, attrs):
        x = xs[0]
        axis = attrs.get("axis", 1 if env.opset < 13 else -1)
        if env.opset >= 13:
            return fn(x, axis=axis, name=out_name(env, node))
        # Before opset 13: coerce to 2-D at `axis`, normalise each row, restore the shape.
        axis %= x.ndim
        tail = x.shape[axis:]
        if None in tail:
            env.sizes(node.input[0], f"{node.op_type} (opset < 13) over unknown sizes")
        rows = ops.reshape(x, (-1, math.prod(tail)))
        return ReshapeLike()(fn(rows, axis=-1), x, name=out_name(env, node))

    return convert


# -- shapes and indexing --------------------------------------------------------------------------
def _shape(env, node, xs, attrs):
    shape = env.sizes(node.input[0], "Shape's input sizes")
    start, end = attrs.get("start", 0), attrs.get("end")
    return np.asarray(shape[start:end], dtype=np.int64)


def _size(env, node, xs, attrs):
    return np.asarray(math.prod(env.sizes(node.input[0], "Size's input sizes")), dtype=np.int64)


def bounded(env, node, elements: int, itemsize: int, what: str) -> None:
    """Refuse, before allocating it, a value computed at build time that is larger than the load allows."""
    size = elements * itemsize
    if size > env.max_constant_bytes:
        raise ModelFileError(f"{node.op_type} {node.name or node.op_type!r}: {what} would take {size:,} bytes, more "
                             f"than a constant may ({env.max_constant_bytes:,}); raise the limit with "
                             "vf.onnx.load(..., max_constant_bytes=...) if the model means it")


def _constant_of_shape(env, node, xs, attrs):
    shape = [int(d) for d in xs.value(0, "ConstantOfShape's shape")]
    fill = np.asarray(attrs.get("value", np.zeros(1, np.float32))).reshape(-1)[0]
    if any(d < 0 for d in shape):
        raise ModelFileError(f"ConstantOfShape {node.name or node.op_type!r}: a negative size in its shape {shape}")
    bounded(env, node, math.prod(shape), np.asarray(fill).dtype.itemsize, f"a constant of shape {shape}")
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


def _range(env, node, xs, attrs):
    start, limit, delta = (np.asarray(xs.value(i, "Range's bounds")).reshape(-1)[0] for i in range(3))
    if delta == 0:
        raise ModelFileError(f"Range {node.name or node.op_type!r}: a step of 0 never reaches its limit")
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    bounded(env, node, count, np.asarray(start).dtype.itemsize, f"a range of {count:,} values")
    return np.arange(start, limit, delta, dtype=np.asarray(start).dtype)


def _flatten(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    head, tail = x.shape[:axis], x.shape[axis:]
    if None not in tail:
        return ops.reshape(x, (-1, math.prod(tail)), name=out_name(env, node))
    if None not in head:
        return ops.reshape(x, (math.prod(head), -1), name=out_name(env, node))
    env.sizes(node.input[0], "Flatten over unknown sizes")


def _reshape(env, node, xs, attrs):
    x = xs[0]
    target = [int(d) for d in xs.value(1, "Reshape's shape")]
    if not attrs.get("allowzero", 0):  # a 0 copies the input's size there
        for i, d in enumerate(target):
            if d == 0:
                target[i] = x.shape[i]
        if None in target:
            env.sizes(node.input[0], "Reshape copying an unknown size")
    return ops.reshape(x, tuple(target), name=out_name(env, node))


def _expand(env, node, xs, attrs):
    x = xs[0]
    shape = tuple(int(d) for d in xs.value(1, "Expand's shape"))
    if None in x.shape:
        env.sizes(node.input[0], "Expand of unknown sizes")
    return ops.broadcast_to(x, broadcast_shapes(x.shape, shape), name=out_name(env, node))


def _axes(xs, attrs, op: str, position: int = 1):
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    value = xs.value(position, f"{op}'s axes")
    return None if value is None else [int(a) for a in np.atleast_1d(value)]


def _squeeze(env, node, xs, attrs):
    x = xs[0]
    axes = _axes(xs, attrs, "Squeeze")
    if axes is None:
        if None in x.shape:
            env.sizes(node.input[0], "Squeeze without axes over unknown sizes")
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return ops.squeeze(x, tuple(axes), name=out_name(env, node))


def _unsqueeze(env, node, xs, attrs):
    x = xs[0]
    axes = _axes(xs, attrs, "Unsqueeze")
    axes = sorted(a % (x.ndim + len(axes)) for a in axes)
    out = x
    for a in axes:  # ascending positions in the output: each insertion keeps the later ones right
        out = ops.expand_dims(out, a)
    return named(out, env, node)


def _transpose(env, node, xs, attrs):
    return ops.transpose(xs[0], attrs.get("perm"), name=out_name(env, node))


def _concat(env, node, xs, attrs):
    parts = [x for x in xs[:] if x is not None]
    nonempty = [x for x in parts if not (x.ndim == 1 and x.shape[0] == 0)]  # an empty shape piece adds nothing
    return ops.concat(nonempty or parts, axis=attrs["axis"], name=out_name(env, node))


def _gather(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", 0) % x.ndim
    index = xs.env.known.get(xs.names[1])
    size = x.shape[axis]
    if index is not None and np.ndim(index) == 0 and size is not None and -size <= int(index) < size:
        # One known position (attention's q, k, v out of a packed tensor): basic indexing, a view, not a copy.
        return ops.getitem(x, (slice(None),) * axis + (int(index),), name=out_name(env, node))
    return Take(axis)(x, xs[1], name=out_name(env, node))


def _slice(env, node, xs, attrs):
    x = xs[0]
    if env.opset < 10:
        starts, ends = attrs["starts"], attrs["ends"]
        axes, steps = attrs.get("axes"), None
    else:
        starts = xs.value(1, "Slice's starts")
        ends = xs.value(2, "Slice's ends")
        axes = xs.value(3, "Slice's axes")
        steps = xs.value(4, "Slice's steps")
    starts = [int(v) for v in np.atleast_1d(starts)]
    ends = [int(v) for v in np.atleast_1d(ends)]
    axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in np.atleast_1d(axes)]
    steps = [1] * len(starts) if steps is None else [int(v) for v in np.atleast_1d(steps)]
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = slice(start, end, step)
    return ops.getitem(x, tuple(index), name=out_name(env, node))


def _split(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", 0) % x.ndim
    sizes = attrs.get("split")
    if sizes is None and xs.present(1):
        sizes = xs.value(1, "Split's sizes")
    if sizes is None:
        parts = attrs.get("num_outputs", len(node.output))
        total = env.sizes(node.input[0], "Split into equal parts: the input's sizes")[axis]
        each = -(-total // parts)
        sizes = [min(each, total - k * each) for k in range(parts)]
    bounds = np.concatenate([[0], np.cumsum([int(s) for s in sizes])])
    outs = []
    for k in range(len(node.output)):
        index = [slice(None)] * x.ndim
        index[axis] = slice(int(bounds[k]), int(bounds[k + 1]))
        outs.append(ops.getitem(x, tuple(index), name=out_name(env, node, k)))
    return outs


def _tile(env, node, xs, attrs):
    x = xs[0]
    repeats = [int(r) for r in xs.value(1, "Tile's repeats")]
    sizes = env.sizes(node.input[0], "Tile's input sizes")
    if any(r < 0 for r in repeats):
        raise Unsupported(f"Tile's repeats {repeats} must be >= 0")
    out = x
    for axis, (size, r) in enumerate(zip(sizes, repeats)):
        if r != 1:
            bounded(env, node, size * r, 8, f"an index of {size * r:,} positions along axis {axis}")
            out = Take(axis)(out, np.tile(np.arange(size), r))
    return named(out, env, node)


def _pad(env, node, xs, attrs):
    x = xs[0]
    mode = attrs.get("mode", "constant")
    if env.opset < 11:
        pads, value, axes = attrs["pads"], attrs.get("value", 0.0), None
    else:
        pads = xs.value(1, "Pad's pads")
        value = xs.value(2, "Pad's constant value", 0)
        axes = xs.value(3, "Pad's axes")
    pads = [int(p) for p in np.atleast_1d(pads)]
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in np.atleast_1d(axes)]
    pairs = [(0, 0)] * x.ndim
    for k, axis in enumerate(axes):
        pairs[axis] = (pads[k], pads[k + len(axes)])
    # Negative pads crop first; what is left pads.
    out = x
    if any(a < 0 or b < 0 for a, b in pairs):
        out = ops.getitem(out, tuple(slice(-a if a < 0 else None, b if b < 0 else None) for a, b in pairs))
    pairs = [(max(a, 0), max(b, 0)) for a, b in pairs]
    if mode == "constant":
        out = ConstantPad(pairs, np.asarray(value).reshape(-1)[0] if np.size(value) else 0)(out)
    elif mode in ("edge", "reflect", "wrap"):
        if None in out.shape:
            env.sizes(node.input[0], f"Pad mode={mode}: the input's sizes")
        out = ops.pad(out, pairs, mode=mode)
    else:
        raise Unsupported(f"mode={mode!r}")
    return named(out, env, node)


def _resize(env, node, xs, attrs):
    roi = None
    if env.opset < 11:
        scales, sizes = xs.value(1, "Resize's scales"), None
    else:
        scales = xs.value(2, "Resize's scales")
        sizes = xs.value(3, "Resize's sizes")
        if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            roi = np.asarray(xs.value(1, "Resize's roi"), dtype=np.float64).reshape(-1)
    return _resized(env, node, xs[0], scales, sizes, attrs, roi)


def _resized(env, node, x, scales, sizes, attrs, roi=None):
    sizes_in = env.sizes(node.input[0], f"{node.op_type}'s input sizes")
    if scales is not None and np.size(scales) == 0:
        scales = None
    if sizes is not None and np.size(sizes) == 0:
        sizes = None
    axes = attrs.get("axes")
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in axes]
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratios = [sizes[k] / sizes_in[a] for k, a in enumerate(axes)]
            ratio = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(round(ratio * sizes_in[a])) for a in axes]
            scales = [ratio] * len(axes)
        else:
            scales = [sizes[k] / sizes_in[a] for k, a in enumerate(axes)]
    else:
        scales = [float(s) for s in scales]
        sizes = [int(math.floor(sizes_in[a] * scales[k])) for k, a in enumerate(axes)]
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    if attrs.get("antialias", 0) or transform == "tf_crop_and_resize":
        return named(_resized_by_matrices(x, sizes_in, axes, sizes, scales, attrs, roi), env, node)
    out = x
    for k, axis in enumerate(axes):
        size, new, scale = sizes_in[axis], sizes[k], scales[k]
        if new == size and scale == 1.0:
            continue
        i = np.arange(new, dtype=np.float64)
        if transform == "half_pixel":
            coord = (i + 0.5) / scale - 0.5
        elif transform == "pytorch_half_pixel":
            coord = (i + 0.5) / scale - 0.5 if new > 1 else np.zeros_like(i)
        elif transform == "align_corners":  # the resized length before rounding, as onnx's reference
            coord = i * (size - 1) / (size * scale - 1) if new > 1 else np.zeros_like(i)
        elif transform == "asymmetric":
            coord = i / scale
        elif transform == "half_pixel_symmetric":
            adjustment = new / (scale * size)
            coord = size / 2 * (1 - adjustment) + (i + 0.5) / scale - 0.5
        else:
            raise Unsupported(f"coordinate_transformation_mode={transform!r}")
        if mode == "nearest":
            rounding = attrs.get("nearest_mode", "round_prefer_floor")
            index = {"round_prefer_floor": np.ceil(coord - 0.5), "round_prefer_ceil": np.floor(coord + 0.5),
                     "floor": np.floor(coord), "ceil": np.ceil(coord)}[rounding]
            out = Take(axis)(out, np.clip(index, 0, size - 1).astype(np.int64))
        elif mode == "linear":
            coord = np.clip(coord, 0, size - 1)
            low = np.floor(coord).astype(np.int64)
            high = np.minimum(low + 1, size - 1)
            weight = (coord - low).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - axis - 1))
            out = Take(axis)(out, low) * (1 - weight) + Take(axis)(out, high) * weight
        else:  # cubic: Keys' kernel over four taps, edge values past the ends
            a = attrs.get("cubic_coeff_a", -0.75)
            base = np.floor(coord)
            taps = [base + k for k in (-1, 0, 1, 2)]
            weights = [_cubic(np.abs(coord - tap), a) for tap in taps]
            if attrs.get("exclude_outside", 0):
                weights = [np.where((tap >= 0) & (tap < size), w, 0.0) for w, tap in zip(weights, taps)]
                total = sum(weights)
                weights = [w / total for w in weights]
            shape = (-1,) + (1,) * (x.ndim - axis - 1)
            source = out
            out = None
            for tap, w in zip(taps, weights):
                term = Take(axis)(source, np.clip(tap, 0, size - 1).astype(np.int64)) * w.astype(x.dtype).reshape(shape)
                out = term if out is None else out + term
    return named(out, env, node)


def _upsample(env, node, xs, attrs):
    """The opset 7-9 form of Resize: scales only, coordinates from the output's corner."""
    if env.opset >= 10:
        raise Unsupported("Upsample is deprecated from opset 10 (Resize replaces it)")
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode={mode!r} (nearest or linear)")
    scales = attrs["scales"] if "scales" in attrs else xs.value(1, "Upsample's scales")
    env_scales = np.asarray(scales, dtype=np.float32)
    return _resized(env, node, xs[0], env_scales, None, {"mode": mode, "coordinate_transformation_mode": "asymmetric",
                                                        "nearest_mode": "floor"})


def _resized_by_matrices(x, sizes_in, axes, sizes, scales, attrs, roi):
    """Resize as one matrix product per axis: each output position a weighted sum of input positions.
    Used for the kernels that widen when downsampling (antialias) and for crops (tf_crop_and_resize,
    whose positions outside the input take extrapolation_value)."""
    out = x
    for k, axis in enumerate(axes):
        span = None if roi is None else (roi[k], roi[len(axes) + k])
        matrix, outside = _axis_weights(attrs, sizes_in[axis], sizes[k], scales[k], span)
        last = list(range(out.ndim))
        last.append(last.pop(axis))  # the resized axis last, for the product
        moved = ops.matmul(ops.transpose(out, tuple(last)), matrix.T.astype(x.dtype))
        if outside is not None and outside.any():
            moved = ops.where(outside, np.asarray(attrs.get("extrapolation_value", 0.0), dtype=x.dtype), moved)
        out = ops.transpose(moved, tuple(np.argsort(last)))
    return out


def _axis_weights(attrs, size: int, new: int, scale: float, roi) -> tuple[np.ndarray, np.ndarray | None]:
    """(new, size) interpolation weights along one axis, and which outputs lie outside the input."""
    mode = attrs.get("mode", "nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    antialias = bool(attrs.get("antialias", 0)) and mode != "nearest"
    a = attrs.get("cubic_coeff_a", -0.75)
    y = np.arange(new, dtype=np.float64)
    width = scale * size
    outside = None
    if transform == "tf_crop_and_resize":
        low, high = roi
        x = np.full(new, (high - low) * (size - 1) / 2) if width == 1 else y * (high - low) * (size - 1) / (width - 1)
        x = x + low * (size - 1)
        outside = (x < 0) | (x > size - 1)
    elif transform == "align_corners":
        x = np.zeros(new) if width == 1 else y * (size - 1) / (width - 1)
    elif transform == "asymmetric":
        x = y / scale
    elif transform == "pytorch_half_pixel":
        x = np.full(new, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif transform == "half_pixel_symmetric":
        x = size / 2 * (1 - new / width) + (y + 0.5) / scale - 0.5
    else:
        x = (y + 0.5) / scale - 0.5
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)  # an exact position takes its left neighbour, as the spec's
    rows = [_kernel(mode, r, scale, a, antialias, attrs.get("nearest_mode", "round_prefer_floor")) for r in ratio]
    weights = np.array(rows, dtype=np.float64)
    n = weights.shape[1]
    pad = -(-n // 2)
    shifted = x + pad
    p = np.floor(shifted)
    frac = shifted - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    index = (p + offset).astype(np.int64)[:, None] + np.arange(n) - pad
    if attrs.get("exclude_outside", 0):
        weights = np.where((index < 0) | (index >= size), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    matrix = np.zeros((new, size))
    np.add.at(matrix, (np.repeat(np.arange(new), n), np.clip(index, 0, size - 1).reshape(-1)), weights.reshape(-1))
    return matrix, outside


def _kernel(mode: str, ratio: float, scale: float, a: float, antialias: bool, nearest_mode: str) -> list[float]:
    """The weights of one output position's taps (left to right) at fractional position `ratio`."""
    if mode == "nearest":
        if ratio == 1.0:
            return [0.0, 1.0]
        pick = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False,
                "ceil": True}[nearest_mode]
        return [0.0, 1.0] if pick else [1.0, 0.0]
    if not antialias:
        if mode == "linear":
            return [1 - ratio, ratio]
        return list(_cubic(np.abs(np.array([ratio + 1, ratio, 1 - ratio, 2 - ratio])), a))
    shrink = min(scale, 1.0)  # downsampling widens the kernel by 1 / scale
    if mode == "linear":
        start = int(np.floor(-1 / shrink) + 1)
        taps = (np.arange(start, start + 2 - 2 * start) - ratio) * shrink
        w = np.clip(1 - np.abs(taps), 0, 1)
    else:
        start = int(np.floor(-2 / shrink) + 1)
        taps = (np.arange(start, 2 - start) - ratio) * shrink
        w = _cubic(np.abs(taps), a)
    return list(w / w.sum())


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


# -- reductions -----------------------------------------------------------------------------------
def _reduce(fn):
    def convert(env, node, xs, attrs):
        axes = _axes(xs, attrs, node.op_type)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return named(xs[0], env, node)
            axes = None
        axis = None if axes is None else tuple(axes)
        return named(fn(xs[0], axis, keep), env, node)

    return convert


REDUCTIONS = {
    "ReduceSum": lambda x, a, k: ops.sum(x, axis=a, keepdims=k),
    "ReduceMean": lambda x, a, k: ops.mean(x, axis=a, keepdims=k),
    "ReduceMax": lambda x, a, k: ops.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: ops.min(x, axis=a, keepdims=k),
    "ReduceSumSquare": lambda x, a, k: ops.sum(x * x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: ops.sum(ops.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: ops.sqrt(ops.sum(x * x, axis=a, keepdims=k)),
    "ReduceLogSum": lambda x, a, k: ops.log(ops.sum(x, axis=a, keepdims=k)),
    "ReduceLogSumExp": lambda x, a, k: _log_sum_exp(x, a, k),
}


def _log_sum_exp(x, axis, keep):
    top = ops.max(x, axis=axis, keepdims=True)
    out = ops.log(ops.sum(ops.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keep else ops.squeeze(out, tuple(range(x.ndim)) if axis is None else axis)


def _identity(env, node, xs, attrs):
    return named(xs[0], env, node)


def _dropout(env, node, xs, attrs):
    training = bool(np.asarray(xs.value(2, "Dropout's training_mode", False)))
    if training:
        ratio = float(np.asarray(xs.value(1, "Dropout's ratio", attrs.get("ratio", 0.5))))
        if ratio != 0.0:
            raise Unsupported(f"training mode with ratio {ratio} (random masks) not supported")
    outs = [named(xs[0], env, node)]
    if len(node.output) > 1 and node.output[1]:  # the mask: every unit kept, in inference
        from ..ops.shape import OnesLike

        outs.append(ops.astype(OnesLike()(xs[0]), "bool", name=out_name(env, node, 1)))
    return outs


def _recurrent(kind: str):
    def convert(env, node, xs, attrs):
        from .rnn import gru, lstm, rnn

        return {"LSTM": lstm, "GRU": gru, "RNN": rnn}[kind](env, node, xs, attrs)

    return convert


CONVERTERS: dict[str, Callable | None] = {
    "Add": _binary(ops.add), "Sub": _binary(ops.subtract), "Mul": _binary(ops.multiply), "Div": _div,
    "Pow": _pow, "Mod": _mod, "Neg": _unary(ops.negative), "Abs": _unary(ops.abs), "Sign": _unary(ops.sign),
    "Sqrt": _unary(ops.sqrt), "Exp": _unary(ops.exp), "Log": _unary(ops.log),
    "Reciprocal": _composed(lambda x, a: 1.0 / x),
    "Relu": _unary(ops.relu), "LeakyRelu": _leaky, "Sigmoid": _unary(ops.sigmoid), "Tanh": _unary(ops.tanh),
    "Erf": _unary(ops.erf), "Gelu": _gelu, "Elu": _composed(_elu), "Selu": _composed(_selu),
    "HardSigmoid": _hard_sigmoid_node, "HardSwish": _unary(ops.hard_swish),
    "Softplus": _composed(_softplus), "Mish": _composed(lambda x, a: x * ops.tanh(_softplus(x, a))), "Softsign": _composed(lambda x, a: x / (ops.abs(x) + 1.0)), "PRelu": _prelu,
    "Max": _variadic(ops.maximum), "Min": _variadic(ops.minimum), "Sum": _variadic(ops.add), "Mean": _mean,
    "Equal": _binary(ops.equal), "Less": _binary(ops.less), "Greater": _binary(ops.greater),
    "LessOrEqual": _binary(ops.less_equal), "GreaterOrEqual": _binary(ops.greater_equal),
    "And": _binary(ops.logical_and), "Or": _binary(ops.logical_or), "Xor": _binary(ops.logical_xor),
    "Not": _unary(ops.logical_not), "Where": _where, "Cast": _cast, "CastLike": _cast_like, "Clip": _clip,
    "Softmax": _softmax(ops.softmax), "LogSoftmax": _softmax(ops.log_softmax),
    "MatMul": _binary(ops.matmul), "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"), "LpPool": _pool("lp"),
    "GlobalAveragePool": _global_pool(ops.mean), "GlobalMaxPool": _global_pool(ops.max),
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm,
    "Shape": _shape, "Size": _size, "ConstantOfShape": _constant_of_shape, "Range": _range,
    "Flatten": _flatten, "Reshape": _reshape, "Expand": _expand, "Transpose": _transpose, "Concat": _concat,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Gather": _gather, "Slice": _slice, "Split": _split,
    "Tile": _tile, "Pad": _pad, "Resize": _resize, "Upsample": _upsample, "Trilu": _trilu,
    **{op: _reduce(fn) for op, fn in REDUCTIONS.items()},
    "Identity": _identity, "Dropout": _dropout, "LSTM": _recurrent("LSTM"), "GRU": _recurrent("GRU"), "RNN": _recurrent("RNN"),
    "Constant": None,
}

# Ops computed from build-time values only (nothing at run time): without known inputs they need
# the graph built for the fed values.
VALUE_ONLY = {"Shape", "Size", "ConstantOfShape", "Range"}

_POOL = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides"}
_REDUCE = {"axes", "keepdims", "noop_with_empty_axes"}
ALLOWED_ATTRS = {
    "LeakyRelu": {"alpha"}, "Elu": {"alpha"}, "Selu": {"alpha", "gamma"}, "HardSigmoid": {"alpha", "beta"},
    "Gelu": {"approximate"}, "Softmax": {"axis"}, "LogSoftmax": {"axis"}, "Mod": {"fmod"},
    "Cast": {"to", "saturate"}, "CastLike": {"saturate"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Conv": {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"},
    "ConvTranspose": {"auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape", "pads",
                      "strides"},
    "InstanceNormalization": {"epsilon"}, "Trilu": {"upper"},
    "MaxPool": _POOL | {"storage_order"}, "AveragePool": _POOL | {"count_include_pad"}, "LpPool": _POOL | {"p"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"},
    "LayerNormalization": {"axis", "epsilon", "stash_type"},
    "Shape": {"start", "end"}, "ConstantOfShape": {"value"},
    "Flatten": {"axis"}, "Reshape": {"allowzero"}, "Transpose": {"perm"}, "Concat": {"axis"},
    "Squeeze": {"axes"}, "Unsqueeze": {"axes"}, "Gather": {"axis"}, "Slice": {"starts", "ends", "axes"},
    "Split": {"axis", "split", "num_outputs"}, "Pad": {"mode", "pads", "value"},
    "Resize": {"mode", "coordinate_transformation_mode", "nearest_mode", "antialias", "exclude_outside",
               "cubic_coeff_a", "extrapolation_value", "axes", "keep_aspect_ratio_policy"},
    "Upsample": {"mode", "scales"},
    "Constant": {"value", "value_float", "value_floats", "value_int", "value_ints"},
    "Dropout": {"ratio", "seed"}, "Clip": {"min", "max"},
    **{op: _REDUCE for op in REDUCTIONS},
    "LSTM": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
             "input_forget", "layout"},
    "GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
            "layout", "linear_before_reset"},
    "RNN": {"activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"},
}


def why_unsupported(node, attrs: dict, known: dict) -> str | None:
    """Why this node cannot be imported whatever it is fed, or None (checked before anything is built)."""
    op = node.op_type
    if op not in CONVERTERS:
        return "op not supported"
    allowed = ALLOWED_ATTRS.get(op, set())
    for k, v in attrs.items():
        if allowed is not None and k not in allowed:
            return f"attribute {k}={v!r} not supported"
    if op == "BatchNormalization" and sum(1 for o in node.output if o) > 1 and not attrs.get("training_mode", 0):
        return "the outputs of training mode before opset 14 (saved mean and variance) are not supported"
    if op == "Gelu" and attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"approximate={attrs['approximate']!r} not supported (none or tanh)"
    if op == "Resize":
        if attrs.get("mode", "nearest") not in ("nearest", "linear", "cubic"):
            return f"mode={attrs['mode']!r} not supported (nearest, linear and cubic are)"
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "edge", "reflect", "wrap"):
        return f"mode={attrs['mode']!r} not supported"
    if op in ("LSTM", "GRU", "RNN"):
        from .rnn import why_unsupported_recurrent

        return why_unsupported_recurrent(node, attrs)
    if op == "Dropout" and len(node.input) > 2 and node.input[2]:
        mode, ratio = known.get(node.input[2]), known.get(node.input[1]) if len(node.input) > 1 else None
        if mode is not None and bool(np.asarray(mode)) and (ratio is None or float(np.asarray(ratio)) != 0.0):
            return "training mode (random masks) not supported"
    return None


def _register_modules() -> None:
    """Add the converters kept in modules of their own (each with its CONVERTERS and ALLOWED_ATTRS)."""
    from . import control, elementwise, layers, quantized, selection, sequences, signal

    for module in (elementwise, selection, layers, quantized, control, sequences, signal):
        CONVERTERS.update(module.CONVERTERS)
        ALLOWED_ATTRS.update(module.ALLOWED_ATTRS)
    for op in control.FUNCTION_OPS:  # imported through the function ONNX defines them by
        CONVERTERS.setdefault(op, control.guarded_function)
        ALLOWED_ATTRS.setdefault(op, None)  # whatever its schema defines


_register_modules()
