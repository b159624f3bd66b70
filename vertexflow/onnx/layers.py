"""ONNX's network-level ops composed of vertexflow's ops (so they stay differentiable): the losses
(NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss), the normalizations (RMS, group, Lp,
mean-variance, local response), Attention (opset 23-25: heads, grouped queries, caches, masks,
causal and sliding windows, soft caps) and RotaryEmbedding."""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops.indexing import GatherElements
from ..ops.shape import ConstantPad, Take
from .convert import Unsupported, named, out_name


def _const(x, value):
    return np.asarray(value, dtype=x.dtype)


# -- losses ---------------------------------------------------------------------------------------
def _nll(env, node, x, target, weight, attrs):
    """The loss of log-probabilities x (N, C, ...) at target (N, ...): -x[n, target[n, ...], ...],
    weighted, positions at ignore_index left out, then reduced."""
    reduction = attrs.get("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise Unsupported(f"reduction={reduction!r} (none, sum or mean)")
    ignore = attrs.get("ignore_index")
    index = target
    if ignore is not None:  # an ignored position reads class 0, then weighs nothing
        index = ops.where(ops.equal(target, np.asarray(ignore, dtype=target.dtype)),
                          np.zeros((), dtype=target.dtype), target)
    picked = ops.squeeze(GatherElements(1)(x, ops.expand_dims(index, 1)), 1)
    loss = ops.negative(picked)
    w = None
    if weight is not None:
        w = Take(0)(weight, index)
    if ignore is not None:
        kept = ops.astype(ops.not_equal(target, np.asarray(ignore, dtype=target.dtype)), x.dtype)
        w = kept if w is None else w * kept
    if w is not None:
        loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return ops.sum(loss)
    if w is None:
        return ops.mean(loss)
    return ops.sum(loss) / ops.sum(w)


def _negative_log_likelihood(env, node, xs, attrs):
    return named(_nll(env, node, xs[0], xs[1], xs[2] if xs.present(2) else None, attrs), env, node)


def _softmax_cross_entropy(env, node, xs, attrs):
    scores = xs[0]
    log_prob = ops.log_softmax(scores, axis=1)
    loss = _nll(env, node, log_prob, xs[1], xs[2] if xs.present(2) else None, attrs)
    outs = [named(loss, env, node)]
    if len(node.output) > 1 and node.output[1]:
        outs.append(named(log_prob, env, node, 1))
    return outs


# -- normalizations -------------------------------------------------------------------------------
def _stash(x, attrs):
    """The dtype statistics are computed in: float32 for narrower floats (stash_type=1, the default)."""
    if attrs.get("stash_type", 1) == 1 and x.dtype.kind == "f" and x.dtype.itemsize < 4:
        return ops.astype(x, "float32")
    return x


def _rms_norm(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    h = _stash(x, attrs)
    mean_square = ops.mean(h * h, axis=axes, keepdims=True)
    y = h * (_const(h, 1) / ops.sqrt(mean_square + _const(h, attrs.get("epsilon", 1e-5))))
    if y.dtype != x.dtype:
        y = ops.astype(y, x.dtype)
    return named(y * xs[1], env, node)


def _group_norm(env, node, xs, attrs):
    x, scale, bias = xs[0], xs[1], xs[2]
    groups = int(attrs["num_groups"])
    sizes = env.sizes(node.input[0], "GroupNormalization's input sizes")
    n, c = sizes[:2]
    h = _stash(x, attrs)
    grouped = ops.reshape(h, (n, groups, -1))
    mu = ops.mean(grouped, axis=2, keepdims=True)
    centered = grouped - mu
    var = ops.mean(centered * centered, axis=2, keepdims=True)
    normal = ops.reshape(centered / ops.sqrt(var + _const(h, attrs.get("epsilon", 1e-5))), sizes)
    if normal.dtype != x.dtype:
        normal = ops.astype(normal, x.dtype)
    shape = (1, -1) + (1,) * (len(sizes) - 2)
    if env.opset < 21 and scale.shape[0] == groups and groups != c:  # opset 18: one scale per group
        scale = ops.reshape(ops.broadcast_to(ops.reshape(scale, (groups, 1)), (groups, c // groups)), (c,))
        bias = ops.reshape(ops.broadcast_to(ops.reshape(bias, (groups, 1)), (groups, c // groups)), (c,))
    return named(normal * ops.reshape(scale, shape) + ops.reshape(bias, shape), env, node)


def _lp_norm(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", -1)
    p = attrs.get("p", 2)
    if p == 1:
        norm = ops.sum(ops.abs(x), axis=axis, keepdims=True)
    elif p == 2:
        norm = ops.sqrt(ops.sum(x * x, axis=axis, keepdims=True))
    else:
        raise Unsupported(f"p={p} (1 or 2)")
    safe = ops.where(ops.equal(norm, _const(x, 0)), _const(x, 1), norm)  # a zero vector stays zero (0 / 0 = 0)
    return named(x / safe, env, node)


def _mean_variance_norm(env, node, xs, attrs):
    x = xs[0]
    axes = tuple(a % x.ndim for a in attrs.get("axes", (0, 2, 3)))
    mu = ops.mean(x, axis=axes, keepdims=True)
    centered = x - mu
    var = ops.mean(centered * centered, axis=axes, keepdims=True)
    return named(centered / (ops.sqrt(var) + _const(x, 1e-9)), env, node)


def _lrn(env, node, xs, attrs):
    """x / (bias + alpha / size * sum of squares over `size` neighbouring channels) ** beta."""
    x = xs[0]
    size = int(attrs["size"])
    alpha, beta, bias = attrs.get("alpha", 1e-4), attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    channels = env.sizes(node.input[0], "LRN's input sizes")[1]
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    squares = ConstantPad([(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2), 0)(x * x)
    total = None
    for k in range(size):
        part = ops.getitem(squares, (slice(None), slice(k, k + channels)))
        total = part if total is None else total + part
    scale = total * _const(x, alpha / size) + _const(x, bias)
    return named(x / ops.power(scale, _const(x, beta)), env, node)


class MaxPoolIndices(ops.Op):
    """Where each 2-D max pool window's maximum is, as ONNX's MaxPool Indices: a flat index into the
    whole input (batch and channel included), row-major, or column-major within each image with
    `storage_order` 1; the first maximum in the window's row-major order wins."""

    name = "max_pool_indices"

    def __init__(self, kernel, strides, pads, dilations, storage_order: int = 0):
        self.kernel, self.strides = tuple(kernel), tuple(strides)
        self.pads, self.dilations = tuple(tuple(p) for p in pads), tuple(dilations)
        self.storage_order = int(storage_order)

    def _out(self, size, k, s, d, pad):
        return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1

    def infer(self, x):
        from ..graph import Spec

        outs = tuple(None if size is None else self._out(size, k, s, d, p)
                     for size, k, s, d, p in zip(x.shape[2:], self.kernel, self.strides, self.dilations, self.pads))
        return Spec(x.shape[:2] + outs, "int64")

    def forward(self, xp, x):
        n, c, h, w = x.shape
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        padded = xp.pad(x, ((0, 0), (0, 0)) + self.pads, constant_values=fill)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        oh, ow = (self._out(size, k, s, d, p) for size, k, s, d, p in
                  zip((h, w), self.kernel, self.strides, self.dilations, self.pads))
        rows = (np.arange(oh) * sh)[:, None] + np.arange(kh) * dh  # (oh, kh) padded positions
        cols = (np.arange(ow) * sw)[:, None] + np.arange(kw) * dw
        windows = padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (n, c, oh, ow, kh, kw)
        best = windows.reshape(n, c, oh, ow, kh * kw).argmax(axis=-1)
        row = rows[np.arange(oh)[:, None], best // kw] - self.pads[0][0]
        col = cols[np.arange(ow)[None, :], best % kw] - self.pads[1][0]
        image = (np.arange(n)[:, None] * c + np.arange(c))[:, :, None, None] * (h * w)
        within = row * w + col if self.storage_order == 0 else row + col * h
        return (image + within).astype(np.int64)

    def vjp(self, F, g, xs, y):
        return (None,)


# -- attention ------------------------------------------------------------------------------------
def _heads(x, sizes, heads):
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    b, s, hidden = sizes
    return ops.transpose(ops.reshape(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def _attention(env, node, xs, attrs):
    q, k, v = xs[0], xs[1], xs[2]
    dtype = q.dtype
    three_d = q.ndim == 3
    if three_d:
        q_heads, kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        if not q_heads or not kv_heads:
            raise Unsupported("3-D inputs need q_num_heads and kv_num_heads")
        q = _heads(q, env.sizes(node.input[0], "Attention's query sizes"), q_heads)
        k = _heads(k, env.sizes(node.input[1], "Attention's key sizes"), kv_heads)
        v = _heads(v, env.sizes(node.input[2], "Attention's value sizes"), kv_heads)
    q_sizes = q.shape if None not in q.shape else env.sizes(node.input[0], "Attention's query sizes")
    batch, q_heads, q_len, head = q_sizes
    scale = attrs.get("scale")
    scale = np.sqrt(1 / np.sqrt(head) if scale is None else scale).astype(dtype)
    past = xs.present(4)
    if past:
        k, v = ops.concat([xs[4], k], axis=2), ops.concat([xs[5], v], axis=2)
    present_k, present_v = k, v
    past_len = (xs[4].shape[2] if xs[4].shape[2] is not None else env.sizes(node.input[4], "past_key sizes")[2]) \
        if past else 0
    kv_len = k.shape[2] if k.shape[2] is not None else past_len + env.sizes(node.input[1], "Attention's key sizes")[-2]
    kv_heads = k.shape[1]
    if kv_heads is not None and kv_heads != q_heads:  # grouped queries: each KV head serves q_heads / kv_heads
        repeat = np.repeat(np.arange(kv_heads), q_heads // kv_heads)
        k, v = Take(1)(k, repeat), Take(1)(v, repeat)

    neg_inf = np.asarray(-np.inf, dtype=dtype)
    zero = np.zeros((), dtype=dtype)
    # The additive bias: the mask (padded to kv_len), causal and window limits, padding of a cache.
    bias = None
    mask = xs[3] if xs.present(3) else None
    if mask is not None:
        short = kv_len - (mask.shape[-1] if mask.shape[-1] is not None
                          else env.sizes(node.input[3], "attn_mask sizes")[-1])
        if short > 0:
            fill = False if mask.dtype == np.bool_ else -np.inf
            mask = ConstantPad([(0, 0)] * (mask.ndim - 1) + [(0, short)], fill)(mask)
        bias = ops.where(mask, zero, neg_inf) if mask.dtype == np.bool_ else mask
    nonpad = xs[6] if xs.present(6) else None
    d = np.arange(kv_len).reshape(1, kv_len) - np.arange(q_len).reshape(q_len, 1)  # key j less query i
    left, right = attrs.get("left_window_size", -1), attrs.get("right_window_size", -1)
    # Query i (absolute position i + offset) may attend key j when j - i <= offset (causal),
    # offset <= j - i + left (left window) and offset >= j - i - right (right window).
    limits = []  # (bound, whether the offset must be >= it)
    if attrs.get("is_causal", 0):
        limits.append((d, True))
    if left >= 0:
        limits.append((d + left, False))
    if right >= 0:
        limits.append((d - right, True))
    if limits:
        if nonpad is None:  # one offset: the past keys
            allowed = np.ones((q_len, kv_len), dtype=bool)
            for bound, at_least in limits:
                allowed &= (past_len >= bound) if at_least else (past_len <= bound)
            term = np.where(allowed, zero, neg_inf)
        else:  # per sample: its valid keys less the queries
            offset = ops.reshape(ops.astype(nonpad, "int64"), (-1, 1, 1, 1)) - np.int64(q_len)
            allowed = None
            for bound, at_least in limits:
                cond = ops.greater_equal(offset, bound) if at_least else ops.less_equal(offset, bound)
                allowed = cond if allowed is None else ops.logical_and(allowed, cond)
            term = ops.where(allowed, zero, neg_inf)
        bias = term if bias is None else bias + term
    if nonpad is not None:
        valid = ops.less(np.arange(kv_len).reshape(1, 1, 1, kv_len),
                         ops.reshape(ops.astype(nonpad, "int64"), (-1, 1, 1, 1)))
        term = ops.where(valid, zero, neg_inf)
        bias = term if bias is None else bias + term

    qk = ops.matmul(q * scale, ops.transpose(k, (0, 1, 3, 2)) * scale)
    softcap = attrs.get("softcap", 0.0)
    if softcap and softcap > 0:
        qk = ops.tanh(qk / _const(qk, softcap)) * _const(qk, softcap)
    mode = attrs.get("qk_matmul_output_mode", 0)
    qk_out = qk
    scores = qk if bias is None else qk + (bias if not isinstance(bias, np.ndarray) else env.graph.const(bias))
    if mode == 2:
        qk_out = scores
    # A query row that may attend no key gives zeros, not NaN: decided on the bias, with a
    # finite stand-in row under the softmax so no NaN reaches values or gradients.
    if bias is None:
        masked_row = None
    elif isinstance(bias, np.ndarray):
        rows = np.isneginf(bias.max(axis=-1, keepdims=True))
        masked_row = rows if rows.any() else None
    else:
        masked_row = ops.isinf(ops.max(bias, axis=-1, keepdims=True), positive=False)
    if masked_row is not None:
        scores = ops.where(masked_row, zero, scores)
    precision = attrs.get("softmax_precision")
    if precision is not None:
        from onnx import helper

        scores = ops.astype(scores, helper.tensor_dtype_to_np_dtype(precision))
    p = ops.softmax(scores, axis=-1)
    if p.dtype != dtype:
        p = ops.astype(p, dtype)
    if masked_row is not None:
        p = ops.where(masked_row, zero, p)
    if mode == 3:
        qk_out = p
    y = ops.matmul(p, v)
    if three_d:
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, q_len, -1))
    outs = [named(y, env, node, 0)]
    for k_out, value in ((1, present_k), (2, present_v), (3, qk_out)):
        if len(node.output) > k_out and node.output[k_out]:
            outs.append(named(value, env, node, k_out))
        elif len(node.output) > k_out:
            outs.append(None)
    return outs


def _rotary(env, node, xs, attrs):
    x, cos, sin = xs[0], xs[1], xs[2]
    original = x
    if x.ndim == 4:  # (batch, heads, seq, size) -> (batch, seq, heads, size)
        x = ops.transpose(x, (0, 2, 1, 3))
    sizes = x.shape if None not in x.shape else env.sizes(node.input[0], "RotaryEmbedding's input sizes")
    if x.ndim == 3:
        heads = attrs.get("num_heads")
        if not heads:
            raise Unsupported("a 3-D input needs num_heads")
        b, s, hidden = sizes
        x = ops.reshape(x, (b, s, heads, hidden // heads))
        sizes = (b, s, heads, hidden // heads)
    head = sizes[3]
    dim = attrs.get("rotary_embedding_dim", 0) or head
    half = dim // 2
    if xs.present(3):
        cos, sin = Take(0)(cos, xs[3]), Take(0)(sin, xs[3])
    cos, sin = ops.expand_dims(cos, 2), ops.expand_dims(sin, 2)
    rotate = ops.getitem(x, (Ellipsis, slice(0, dim)))
    interleaved = attrs.get("interleaved", 0)
    if interleaved:
        x1, x2 = ops.getitem(rotate, (Ellipsis, slice(0, None, 2))), ops.getitem(rotate, (Ellipsis, slice(1, None, 2)))
    else:
        x1, x2 = ops.getitem(rotate, (Ellipsis, slice(0, half))), ops.getitem(rotate, (Ellipsis, slice(half, dim)))
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = ops.reshape(ops.concat([ops.expand_dims(real, -1), ops.expand_dims(imag, -1)], axis=-1),
                              tuple(sizes[:3]) + (dim,))
    else:
        rotated = ops.concat([real, imag], axis=-1)
    if dim < head:
        rotated = ops.concat([rotated, ops.getitem(x, (Ellipsis, slice(dim, None)))], axis=-1)
    if original.ndim == 3:
        out = ops.reshape(rotated, tuple(sizes[:2]) + (-1,))
    else:
        out = ops.transpose(rotated, (0, 2, 1, 3))
    return named(out, env, node)


def _grid_sample(env, node, xs, attrs):
    from ..ops.sampling import grid_sample

    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(attrs.get("mode", "linear"), attrs.get("mode", "linear"))
    if None in xs[0].shape[1:] or None in xs[1].shape[1:-1]:
        env.sizes(node.input[0], "GridSample's image sizes")
        env.sizes(node.input[1], "GridSample's grid sizes")
    return grid_sample(xs[0], xs[1], mode, attrs.get("padding_mode", "zeros"), bool(attrs.get("align_corners", 0)),
                       name=out_name(env, node))


def _affine_grid(env, node, xs, attrs):
    from ..ops.sampling import affine_grid

    size = np.asarray(xs.value(1, "AffineGrid's size")).reshape(-1)
    return affine_grid(xs[0], size, bool(attrs.get("align_corners", 0)), name=out_name(env, node))


CONVERTERS = {
    "NegativeLogLikelihoodLoss": _negative_log_likelihood, "SoftmaxCrossEntropyLoss": _softmax_cross_entropy,
    "RMSNormalization": _rms_norm, "GroupNormalization": _group_norm, "LpNormalization": _lp_norm,
    "MeanVarianceNormalization": _mean_variance_norm, "LRN": _lrn, "Attention": _attention,
    "RotaryEmbedding": _rotary, "GridSample": _grid_sample, "AffineGrid": _affine_grid,
}

ALLOWED_ATTRS = {
    "NegativeLogLikelihoodLoss": {"reduction", "ignore_index"}, "SoftmaxCrossEntropyLoss": {"reduction", "ignore_index"},
    "RMSNormalization": {"axis", "epsilon", "stash_type"}, "GroupNormalization": {"num_groups", "epsilon", "stash_type"},
    "LpNormalization": {"axis", "p"}, "MeanVarianceNormalization": {"axes"}, "LRN": {"alpha", "beta", "bias", "size"},
    "Attention": {"is_causal", "kv_num_heads", "q_num_heads", "qk_matmul_output_mode", "scale", "softcap",
                  "softmax_precision", "left_window_size", "right_window_size"},
    "RotaryEmbedding": {"interleaved", "num_heads", "rotary_embedding_dim"},
    "GridSample": {"mode", "padding_mode", "align_corners"}, "AffineGrid": {"align_corners"},
}
