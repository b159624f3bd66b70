"""ONNX's selection, indexing and rearranging ops: ArgMax/ArgMin, TopK, CumSum/CumProd, ReduceProd,
gathers and scatters, OneHot, Hardmax, Einsum, DepthToSpace/SpaceToDepth, ReverseSequence,
CenterCropPad, TensorScatter, Det, and the ops whose output size depends on the data (Compress,
NonZero, Unique): those are computed when the graph is built for the fed values, as Shape-dependent
graphs are."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.indexing import ArgMax, GatherElements, GatherND, OneHotIndices, ScatterElements, ScatterND
from ..ops.shape import ConstantPad, Take
from .convert import _REDUCE, Unsupported, _reduce, named, out_name


def _arg(smallest: bool):
    def convert(env, node, xs, attrs):
        return ArgMax(attrs.get("axis", 0), bool(attrs.get("keepdims", 1)), bool(attrs.get("select_last_index", 0)),
                      smallest)(xs[0], name=out_name(env, node))

    return convert


def _topk(env, node, xs, attrs):
    x = xs[0]
    k = attrs["k"] if env.opset < 10 else int(np.asarray(xs.value(1, "TopK's K")).reshape(-1)[0])
    axis = attrs.get("axis", -1)
    size = x.shape[axis % x.ndim]
    if size is not None and not 0 <= k <= size:
        raise Unsupported(f"K={k} is not within the {size} values along axis {axis}")
    values, index = ops.topk(x, int(k), axis, bool(attrs.get("largest", 1)))
    return [named(values, env, node, 0), named(index, env, node, 1)]


def _running(fn):
    def convert(env, node, xs, attrs):
        axis = int(np.asarray(xs.value(1, f"{node.op_type}'s axis")).reshape(-1)[0])
        return fn(xs[0], axis, bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0)),
                  name=out_name(env, node))

    return convert


def _gather_elements(env, node, xs, attrs):
    return GatherElements(attrs.get("axis", 0))(xs[0], xs[1], name=out_name(env, node))


def _scatter_elements(env, node, xs, attrs):
    return ScatterElements(attrs.get("axis", 0), attrs.get("reduction", "none"))(
        xs[0], xs[1], xs[2], name=out_name(env, node))


def _gather_nd(env, node, xs, attrs):
    return GatherND(attrs.get("batch_dims", 0))(xs[0], xs[1], name=out_name(env, node))


def _scatter_nd(env, node, xs, attrs):
    return ScatterND(attrs.get("reduction", "none"))(xs[0], xs[1], xs[2], name=out_name(env, node))


def _one_hot(env, node, xs, attrs):
    depth = int(np.asarray(xs.value(1, "OneHot's depth")).reshape(-1)[0])
    return OneHotIndices(depth, attrs.get("axis", -1))(xs[0], xs[2], name=out_name(env, node))


def _hardmax(env, node, xs, attrs):
    x = xs[0]
    axis = attrs.get("axis", -1 if env.opset >= 13 else 1) % x.ndim
    if env.opset < 13:  # coerced to 2-D at `axis`: one row per leading index
        sizes = env.sizes(node.input[0], "Hardmax (opset < 13): the input's sizes")
        rows = ops.reshape(x, (int(np.prod(sizes[:axis])), -1))
        return ops.reshape(_hardmax_axis(rows, 1), sizes, name=out_name(env, node))
    return named(_hardmax_axis(x, axis), env, node)


def _hardmax_axis(x, axis):
    first = ArgMax(axis, keepdims=False)(x)
    depth = x.shape[axis]
    values = np.asarray([0, 1], dtype=x.dtype)
    return OneHotIndices(depth, axis)(first, values)


def _einsum(env, node, xs, attrs):
    return ops.einsum(attrs["equation"], *[x for x in xs[:]], name=out_name(env, node))


def _depth_to_space(env, node, xs, attrs):
    x = xs[0]
    n, c, h, w = env.sizes(node.input[0], "DepthToSpace's input sizes")
    b = int(attrs["blocksize"])
    if attrs.get("mode", "DCR") == "DCR":
        y = ops.transpose(ops.reshape(x, (n, b, b, c // (b * b), h, w)), (0, 3, 4, 1, 5, 2))
    else:
        y = ops.transpose(ops.reshape(x, (n, c // (b * b), b, b, h, w)), (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (n, c // (b * b), h * b, w * b), name=out_name(env, node))


def _space_to_depth(env, node, xs, attrs):
    x = xs[0]
    n, c, h, w = env.sizes(node.input[0], "SpaceToDepth's input sizes")
    b = int(attrs["blocksize"])
    order = (0, 3, 5, 1, 2, 4) if attrs.get("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ops.transpose(ops.reshape(x, (n, c, h // b, b, w // b, b)), order)
    return ops.reshape(y, (n, c * b * b, h // b, w // b), name=out_name(env, node))


def _reverse_sequence(env, node, xs, attrs):
    x = xs[0]
    lengths = np.asarray(xs.value(1, "ReverseSequence's sequence_lens")).astype(np.int64)
    sizes = env.sizes(node.input[0], "ReverseSequence's input sizes")
    batch_axis, time_axis = attrs.get("batch_axis", 1), attrs.get("time_axis", 0)
    t = np.arange(sizes[time_axis])
    source = np.where(t[None, :] < lengths[:, None], lengths[:, None] - 1 - t[None, :], t[None, :])  # (batch, time)
    if batch_axis > time_axis:
        source = source.T
    shape = [1] * len(sizes)
    shape[batch_axis], shape[time_axis] = sizes[batch_axis], sizes[time_axis]
    index = np.broadcast_to(source.reshape(shape), sizes).astype(np.int64)
    return GatherElements(time_axis)(x, index, name=out_name(env, node))


def _center_crop_pad(env, node, xs, attrs):
    x = xs[0]
    target = [int(v) for v in np.asarray(xs.value(1, "CenterCropPad's shape")).reshape(-1)]
    sizes = env.sizes(node.input[0], "CenterCropPad's input sizes")
    axes = [a % x.ndim for a in attrs.get("axes", range(x.ndim))]
    crop, pads = [slice(None)] * x.ndim, [(0, 0)] * x.ndim
    for axis, want in zip(axes, target):
        size = sizes[axis]
        if want < size:
            start = (size - want) // 2
            crop[axis] = slice(start, start + want)
        elif want > size:
            before = (want - size) // 2
            pads[axis] = (before, want - size - before)
    out = ops.getitem(x, tuple(crop))
    if any(p != (0, 0) for p in pads):
        out = ConstantPad(pads, 0)(out)
    return named(out, env, node)


def _tensor_scatter(env, node, xs, attrs):
    past, update = xs[0], xs[1]
    axis = attrs.get("axis", -2) % past.ndim
    mode = attrs.get("mode", "linear")
    if mode not in ("linear", "circular"):
        raise Unsupported(f"mode={mode!r} (linear or circular)")
    sizes = env.sizes(node.input[1], "TensorScatter's update sizes")
    longest = env.sizes(node.input[0], "TensorScatter's cache sizes")[axis]
    steps = np.arange(sizes[axis]).reshape((-1,) + (1,) * (len(sizes) - axis - 1))
    if xs.present(2):
        starts = ops.reshape(xs[2], (-1,) + (1,) * (len(sizes) - 1))
        index = starts + steps.astype(xs[2].dtype)
    else:
        index = env.graph.const(steps)
    if mode == "circular":
        index = ops.remainder(index, np.asarray(longest, dtype=index.dtype))
    index = ops.broadcast_to(ops.astype(index, "int64"), sizes)
    return ScatterElements(axis)(past, index, update, name=out_name(env, node))


def _compress(env, node, xs, attrs):
    x = xs[0]
    keep = np.flatnonzero(np.asarray(xs.value(1, "Compress's condition")).astype(bool))
    if "axis" not in attrs:
        return Take(0)(ops.reshape(x, (-1,)), keep, name=out_name(env, node))
    axis = attrs["axis"] % x.ndim
    size = env.sizes(node.input[0], "Compress's input sizes")[axis]
    return Take(axis)(x, keep[keep < size], name=out_name(env, node))


def _nonzero(env, node, xs, attrs):
    return np.array(np.nonzero(np.asarray(xs.value(0, "NonZero's input"))), dtype=np.int64).reshape(
        np.ndim(xs.value(0, "NonZero's input")), -1)


def _unique(env, node, xs, attrs):
    x = np.asarray(xs.value(0, "Unique's input"))
    axis = attrs.get("axis")
    flat = x.reshape(-1) if axis is None else x
    values, first, inverse, counts = np.unique(flat, axis=axis, return_index=True, return_inverse=True,
                                               return_counts=True)
    inverse = inverse.reshape(-1)
    if not attrs.get("sorted", 1):  # in order of first appearance
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        values = np.take(values, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return [values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)]


def _non_max_suppression(env, node, xs, attrs):
    """[batch, class, box] of the boxes kept per class, best score first, each dropped when it overlaps
    one kept before by more than the IoU threshold: from the fed boxes and scores (the graph is built
    for them, as for any output whose size depends on the data)."""
    boxes = np.asarray(xs.value(0, "NonMaxSuppression's boxes"), dtype=np.float64)
    scores = np.asarray(xs.value(1, "NonMaxSuppression's scores"), dtype=np.float64)
    keep_at_most = int(np.asarray(xs.value(2, "max_output_boxes_per_class", 0)).reshape(-1)[0]) \
        if xs.present(2) else 0
    iou_limit = float(np.asarray(xs.value(3, "iou_threshold", 0.0)).reshape(-1)[0]) if xs.present(3) else 0.0
    floor = np.asarray(xs.value(4, "score_threshold")).reshape(-1)[0] if xs.present(4) else None
    if attrs.get("center_point_box", 0):  # (x center, y center, width, height) -> corners
        cx, cy, w, h = np.moveaxis(boxes, -1, 0)
        low = np.stack([cy - h / 2, cx - w / 2], axis=-1)
        high = np.stack([cy + h / 2, cx + w / 2], axis=-1)
    else:  # two corners, in either order
        low = np.minimum(boxes[..., 0:2], boxes[..., 2:4])
        high = np.maximum(boxes[..., 0:2], boxes[..., 2:4])
    area = np.prod(high - low, axis=-1)
    kept = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = [i for i in range(scores.shape[2]) if floor is None or scores[b, c, i] > floor]
            candidates.sort(key=lambda i: (-scores[b, c, i], i))  # best first, ties by position
            chosen: list[int] = []
            for i in candidates:
                if len(chosen) >= keep_at_most:
                    break
                overlap_low = np.maximum(low[b, i], low[b, chosen])
                overlap_high = np.minimum(high[b, i], high[b, chosen])
                inter = np.prod(np.clip(overlap_high - overlap_low, 0, None), axis=-1)
                union = area[b, i] + area[b, chosen] - inter
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = np.where((area[b, i] > 0) & (area[b, chosen] > 0) & (union > 0) & (inter > 0),
                                   inter / union, 0.0)
                if not np.any(iou > iou_limit):
                    chosen.append(i)
            kept += [(b, c, i) for i in chosen]
    return np.array(kept, dtype=np.int64).reshape(-1, 3)


def _det(env, node, xs, attrs):
    return ops.det(xs[0], name=out_name(env, node))


CONVERTERS = {
    "ArgMax": _arg(False), "ArgMin": _arg(True), "TopK": _topk,
    "CumSum": _running(ops.cumsum), "CumProd": _running(ops.cumprod),
    "ReduceProd": _reduce(lambda x, a, k: ops.prod(x, axis=a, keepdims=k)),
    "GatherElements": _gather_elements, "ScatterElements": _scatter_elements, "Scatter": _scatter_elements,
    "GatherND": _gather_nd, "ScatterND": _scatter_nd, "OneHot": _one_hot, "Hardmax": _hardmax,
    "Einsum": _einsum, "DepthToSpace": _depth_to_space, "SpaceToDepth": _space_to_depth,
    "ReverseSequence": _reverse_sequence, "CenterCropPad": _center_crop_pad, "TensorScatter": _tensor_scatter,
    "Compress": _compress, "NonZero": _nonzero, "Unique": _unique, "Det": _det,
    "NonMaxSuppression": _non_max_suppression,
}

ALLOWED_ATTRS = {
    "ArgMax": {"axis", "keepdims", "select_last_index"}, "ArgMin": {"axis", "keepdims", "select_last_index"},
    "TopK": {"axis", "largest", "sorted", "k"}, "CumSum": {"exclusive", "reverse"},
    "CumProd": {"exclusive", "reverse"}, "ReduceProd": _REDUCE, "GatherElements": {"axis"},
    "ScatterElements": {"axis", "reduction"}, "Scatter": {"axis"}, "GatherND": {"batch_dims"},
    "ScatterND": {"reduction"}, "OneHot": {"axis"}, "Hardmax": {"axis"}, "Einsum": {"equation"},
    "DepthToSpace": {"blocksize", "mode"}, "SpaceToDepth": {"blocksize", "mode"},
    "ReverseSequence": {"batch_axis", "time_axis"}, "CenterCropPad": {"axes"}, "TensorScatter": {"axis", "mode"},
    "Compress": {"axis"}, "Unique": {"axis", "sorted"}, "NonMaxSuppression": {"center_point_box"},
}
