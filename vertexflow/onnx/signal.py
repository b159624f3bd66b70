"""ONNX's DFT and STFT on `vf.fourier` (ops/spectral.py): an FFT whose derivative is its adjoint, so
gradients flow through an imported spectrogram like through the rest of the model. Complex values
travel as ONNX writes them: a last axis of 2 (real, imaginary), or of 1 for a real signal. STFT's
frames are a gather of the signal with a fixed index, times the window.
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
