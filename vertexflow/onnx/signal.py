"""ONNX's DFT and STFT on `vf.fourier` (ops/spectral.py): an FFT whose derivative is its adjoint, so
gradients flow through an imported spectrogram like through the rest of the model. Complex values
travel as ONNX writes them: a last axis of 2 (real, imaginary), or of 1 for a real signal. STFT's
frames are a gather of the signal with a fixed index, times the window. Col2Im (torch's `Fold`), the
adjoint of cutting an image into blocks, is here too: blocks put back by pads and sums.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Node
from .convert import Unsupported, named


def _dft_along(x: Node, sizes: tuple[int, ...], axis: int, length: int | None, inverse: bool, onesided: bool):
    """x (..., 1 or 2) transformed along `axis`, as ONNX's DFT gives it."""
    if sizes[-1] not in (1, 2):
        raise Unsupported(f"the last axis holds (real, imaginary) parts: 1 or 2 entries, not {sizes[-1]}")
    if not 0 <= axis < len(sizes) - 1:
        raise Unsupported(f"axis {axis} is not an axis of the signal (the last axis holds its parts)")
    if length is None:
        length = 2 * (sizes[axis] - 1) if inverse and onesided else sizes[axis]
    if length < 1:
        raise Unsupported(f"dft_length {length}: at least 1")
    return ops.fourier(x, axis, length, inverse, onesided)


def _dft(env, node, xs, attrs):
    sizes = env.sizes(node.input[0], "DFT's input sizes")
    length = None
    if xs.present(1):
        length = int(np.asarray(xs.value(1, "DFT's dft_length")).reshape(-1)[0])
    if env.opset >= 20:
        axis = int(np.asarray(xs.value(2, "DFT's axis", -2)).reshape(-1)[0]) if xs.present(2) else -2
    else:
        axis = attrs.get("axis", 1)
    axis = axis % len(sizes)
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    return named(_dft_along(xs[0], sizes, axis, length, inverse, onesided), env, node)


def _stft(env, node, xs, attrs):
    sizes = env.sizes(node.input[0], "STFT's signal sizes")
    if len(sizes) != 3:
        raise Unsupported(f"a signal of shape [batch, length, 1 or 2], not {list(sizes)}")
    step = int(np.asarray(xs.value(1, "STFT's frame_step")).reshape(-1)[0])
    window = xs[2] if xs.present(2) else None
    size = env.sizes(node.input[2], "STFT's window size")[0] if window is not None else None
    if xs.present(3):
        frame = int(np.asarray(xs.value(3, "STFT's frame_length")).reshape(-1)[0])
    else:
        frame = size if size is not None else sizes[1]
    size = frame if size is None else size
    if step < 1 or size < 1 or size > sizes[1]:
        raise Unsupported(f"frames of {size} every {step} over a signal of {sizes[1]}")
    frames = 1 + (sizes[1] - size) // step
    index = (np.arange(frames)[:, None] * step + np.arange(size)[None, :]).astype(np.int64)
    framed = ops.take(xs[0], index, axis=1)  # [batch, frames, size, parts]
    if window is not None:
        framed = framed * ops.reshape(window, (1, 1, size, 1))
    onesided = bool(attrs.get("onesided", 1))
    return named(_dft_along(framed, (sizes[0], frames, size, sizes[2]), 2, frame, False, onesided), env, node)


CONVERTERS = {"DFT": _dft, "STFT": _stft}
ALLOWED_ATTRS = {"DFT": {"axis", "inverse", "onesided"}, "STFT": {"onesided"}}


# -- Col2Im ---------------------------------------------------------------------------------------
def _col2im(env, node, xs, attrs):
    """Columns back to an image, overlapping blocks summed (torch's fold): for each offset in the block,
    its column rows spread with zeros between them (the stride), shifted to the offset (the dilation),
    padded to the image and added; then the image's pads cropped. Pads, reshapes and adds: differentiable."""
    import itertools
    import math

    n, rows, count = env.sizes(node.input[0], "Col2Im's input sizes")
    image = [int(v) for v in np.asarray(xs.value(1, "Col2Im's image_shape")).reshape(-1)]
    block = [int(v) for v in np.asarray(xs.value(2, "Col2Im's block_shape")).reshape(-1)]
    d = len(image)
    dilations = list(attrs.get("dilations", [1] * d))
    strides = list(attrs.get("strides", [1] * d))
    pads = list(attrs.get("pads", [0] * 2 * d))
    if len(block) != d or len(dilations) != d or len(strides) != d or len(pads) != 2 * d:
        raise Unsupported(f"image_shape, block_shape, dilations, strides and pads of {d} dimensions each")
    if min(block + dilations + strides) < 1 or min(pads) < 0 or rows % math.prod(block):
        raise Unsupported(f"blocks {block}, dilations {dilations}, strides {strides}, pads {pads} for {rows} rows")
    channels = rows // math.prod(block)
    padded = [image[i] + pads[i] + pads[d + i] for i in range(d)]
    counts = [(padded[i] - (dilations[i] * (block[i] - 1) + 1)) // strides[i] + 1 for i in range(d)]
    if min(counts) < 1 or math.prod(counts) != count:
        raise Unsupported(f"{count} columns, where blocks {block} over the padded image {padded} make "
                          f"{math.prod(max(c, 0) for c in counts)}")
    x = ops.reshape(xs[0], (n, channels, *block, *counts))
    total = None
    for offset in itertools.product(*(range(b) for b in block)):
        part = ops.getitem(x, (slice(None), slice(None), *offset))  # (n, channels, *counts)
        spread = []
        for axis in range(d):
            step, size = strides[axis], counts[axis]
            if step > 1:  # each entry then step - 1 zeros: (.., size, 1, ..) padded to (.., size, step, ..)
                part = ops.expand_dims(part, 3 + axis)
                part = ops.pad(part, [(0, 0)] * (3 + axis) + [(0, step - 1)] + [(0, 0)] * (d - axis - 1))
                shape = [n, channels, *counts]
                shape[2 + axis] = size * step
                for done, length in spread:
                    shape[2 + done] = length
                part = ops.reshape(part, shape)
            spread.append((axis, size * step))
        placed, keep = [], []
        for axis, length in spread:
            start = offset[axis] * dilations[axis]
            used = min(length, padded[axis] - start)  # the zeros after the last entry may pass the edge
            keep.append(slice(0, used))
            placed.append((start, padded[axis] - start - used))
        part = ops.getitem(part, (slice(None), slice(None), *keep))
        part = ops.pad(part, [(0, 0), (0, 0)] + placed)
        total = part if total is None else total + part
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(d))
    return named(ops.getitem(total, (slice(None), slice(None), *crop)), env, node)


CONVERTERS["Col2Im"] = _col2im
ALLOWED_ATTRS["Col2Im"] = {"dilations", "pads", "strides"}
