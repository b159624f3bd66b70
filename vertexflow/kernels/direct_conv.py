"""Convolutions computed directly: each block of outputs summed over its taps in registers, no im2col.

The im2col product (`im2col.py`) copies each image's windows out as columns,
then asks BLAS for a (O, C * kh * kw) by (C * kh * kw, OH * OW) product: with
the 16 to 64 output channels of a small CNN, that product is a short, wide
matrix BLAS runs at half its speed (43 GFLOP/s on one core here, against 100
for a square one). Here the sum runs where it is used: for a block of 4
output channels and a row of 16 neighbouring output pixels (8 channels where
the CPU has AVX-512's 32 vector registers; 8 by 8 on rows narrower than 16),
64 accumulators (128) stay in registers while the loop walks the taps
(c, i, j); each tap loads 16 neighbouring input pixels once and 4 (8)
weights, and does 64 (128) multiply-adds. On the exported models' convolutions at batch 8 (and two
wider ones, `bench/convolutions.py`), with blocks of 4 channels: 56-100 GFLOP/s on one core where
the columns ran at 39-87, 109-174 on two (58-165); onnxruntime's Conv 82-115
and 133-228. Blocks of 8 ran 5% faster on one core.

Data: each image is copied into a zero-bordered scratch buffer (the padding,
once per image, so the loop checks no bounds), its columns dealt into
`stride` phases so that a strided convolution still reads 16 neighbouring
pixels of one phase (an image without padding or such a stride is read in
place). A table of offsets gives each tap's place in that
buffer. The last block of a row (or of the channels) that would run past
the end starts earlier instead and overlaps the one before, computing the
same outputs again with the same operations: the same bits.

The block is written out as straight-line code (`_source`) that LLVM's SLP
vectorizer turns into vector multiply-adds. numba switches that vectorizer
off by default (numba#8852: miscompilations in other code), so it is on
only while this kernel compiles (`generated.module(..., slp=True)`), and the
kernel is compiled for its signatures up front and never again; the tests
check it against torch over drawn shapes, strides, paddings and dilations.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from ..errors import InternalError
from ..machine import threads_in_force
from . import available
from .epilogue import NONE, passes_source
from .generated import module
from .team import CONTROL, team

LANES = (16, 8)  # output pixels a block, the widest that fits the output row


def _blocks() -> dict[int, int]:
    """Output channels a block, by its lanes. With AVX2's 16 vector registers: 64 sums, 8 registers of 8
    floats (blocks of 4 by 8 lanes left 4 registers of sums, fewer than a multiply-add's latency
    covers: a ViT's patch convolution ran at half speed). With AVX-512's 32, 128 sums a block of 16
    lanes, 16 registers: 5% faster on one core on the exported models' convolutions, 5-14% on two,
    than 4 by 16 (`bench/convolutions.py`'s shapes at batch 8, this project's machine)."""
    try:
        from llvmlite.binding import get_host_cpu_features

        wide = bool(get_host_cpu_features().get("avx512f", False))
    except (ImportError, RuntimeError):
        wide = False
    return {16: 8 if wide else 4, 8: 8}


BLOCKS = _blocks()
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_TEMPLATE = '''
import numpy as np
from numba import types

from vertexflow.kernels.atomics import pointer_at
from vertexflow.kernels.team_loops import run_jobs

RECORD = {record}


@numba.njit(cache=True, nogil=True, fastmath={{"contract"}})
def convolve(x, weights, offsets, starts, out, buf, bias, p0, p1, apply, ph, pw, sh, sw, first, last):
    n_images, outs, oh, ow = out.shape
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    rows, cols = buf.shape[1], buf.shape[3]
    row_stride = buf.shape[2] * cols
    taps, plane = offsets.shape[0], oh * ow
    xf, bf, yf, wf = x.reshape(-1), buf.reshape(-1), out.reshape(-1), weights.reshape(-1)
    zero = out.dtype.type(0)
    blocks_per_row = (ow + {last_lane}) // {lanes}
    # Without padding or a stride along the rows the buffer would be the image itself: read x there
    copy = ph > 0 or pw > 0 or sw > 1
    data = bf if copy else xf
    if copy:
        buf[:] = 0
    for n in range(first, last):
        origin = 0 if copy else n * channels * height * width
        for c in range(channels if copy else 0):  # the image into the buffer, its columns dealt to the stride's phases
            for y in range(height):
                source = ((n * channels + c) * height + y) * width
                target = (c * rows + y + ph) * row_stride
                if sw == 1:  # (flat and unsigned: a slice assignment per row cost 25 ns, 0.1 ms a conv)
                    for col in range(width):
                        bf[np.uint64(target + pw + col)] = xf[np.uint64(source + col)]
                    continue
                phase, column = pw % sw, pw // sw  # (no division per pixel: it cost more than the sums)
                for col in range(width):
                    bf[np.uint64(target + phase * cols + column)] = xf[np.uint64(source + col)]
                    phase += 1
                    if phase == sw:
                        phase, column = 0, column + 1
        image = n * outs * plane
        for r in range(oh):
            row = r * ow
            for qb in range(blocks_per_row):
                q = min(qb * {lanes}, ow - {lanes})
                base = origin + r * sh * row_stride + q
                for block in range(starts.shape[0]):
{body}
        if apply:  # the epilogue's own pass on the image, in cache: its bits
            planes(out[n:n + 1].reshape((1, outs, plane)), bias, p0, p1)


@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def job(index, arguments, extra):
    a = numba.carray(arguments, RECORD, np.int64)
    reals = numba.carray(arguments, RECORD, np.float64)
    x = numba.carray(pointer_at(a[0]), (a[1], a[2], a[3], a[4]), np.{dtype})
    weights = numba.carray(pointer_at(a[5]), (a[6], a[7], {block}), np.{dtype})
    offsets = numba.carray(pointer_at(a[8]), a[7], np.int64)
    starts = numba.carray(pointer_at(a[9]), a[6], np.int64)
    out = numba.carray(pointer_at(a[10]), (a[1], a[11], a[12], a[13]), np.{dtype})
    buf = numba.carray(pointer_at(a[14]), (a[2], a[15], a[16], a[17]), np.{dtype})
    bias = numba.carray(pointer_at(a[18]), a[11], np.{dtype})
    convolve(x, weights, offsets, starts, out, buf, bias, np.{dtype}(reals[25]), np.{dtype}(reals[26]),
             a[19] != 0, a[20], a[21], a[22], a[16], a[23], a[24])


@numba.njit(cache=True, nogil=True)
def split(x, weights, offsets, starts, out, bufs, bias, p0, p1, apply, ph, pw, sh, parts, control, routine):
    """The images in `parts` C jobs on the team (one here where it is 1), each with a buffer of its own."""
    record = np.empty((parts, RECORD), np.int64)
    reals = record.view(np.float64)
    n_images = x.shape[0]
    for k in range(parts):
        record[k, 0], record[k, 1], record[k, 2] = x.ctypes.data, x.shape[0], x.shape[1]
        record[k, 3], record[k, 4] = x.shape[2], x.shape[3]
        record[k, 5], record[k, 6], record[k, 7] = weights.ctypes.data, weights.shape[0], weights.shape[1]
        record[k, 8], record[k, 9] = offsets.ctypes.data, starts.ctypes.data
        record[k, 10], record[k, 11] = out.ctypes.data, out.shape[1]
        record[k, 12], record[k, 13] = out.shape[2], out.shape[3]
        record[k, 14] = bufs.ctypes.data + k * bufs.strides[0]
        record[k, 15], record[k, 16], record[k, 17] = bufs.shape[2], bufs.shape[3], bufs.shape[4]
        record[k, 18], record[k, 19] = bias.ctypes.data, apply
        record[k, 20], record[k, 21], record[k, 22] = ph, pw, sh
        record[k, 23], record[k, 24] = n_images * k // parts, n_images * (k + 1) // parts
        reals[k, 25], reals[k, 26] = p0, p1
    run_jobs(control, routine, parts, record.ctypes.data, RECORD * 8, 0)
'''
RECORD = 27  # int64 slots of a job's arguments (`job` in the template reads them)


def _source(lanes: int, code: int, dtype: np.dtype) -> str:
    """The kernel for blocks of `lanes` output pixels and BLOCKS[lanes] output channels with an
    activation's epilogue (its passes, `epilogue.passes_source`), a C job for `dtype` and `split`, as
    numba source."""
    block = BLOCKS[lanes]
    pad = " " * 20
    lines = [f"{pad}a{b}_{lane} = zero" for b in range(block) for lane in range(lanes)]
    lines += [f"{pad}k = np.uint64(block * taps * {block})",
              f"{pad}for t in range(taps):",
              f"{pad}    s = np.uint64(base + offsets[t])"]
    lines += [f"{pad}    w{b} = wf[k + np.uint64({b})]" for b in range(block)]
    lines.append(f"{pad}    k += np.uint64({block})")
    lines += [f"{pad}    x{lane} = data[s + np.uint64({lane})]" for lane in range(lanes)]
    lines += [f"{pad}    a{b}_{lane} += w{b} * x{lane}" for b in range(block) for lane in range(lanes)]
    for b in range(block):
        lines.append(f"{pad}y = np.uint64(image + (starts[block] + {b}) * plane + row + q)")
        lines += [f"{pad}yf[y + np.uint64({lane})] = a{b}_{lane}" for lane in range(lanes)]
    return passes_source(code) + _TEMPLATE.format(record=RECORD, lanes=lanes, last_lane=lanes - 1, block=block,
                                                  dtype=dtype.name, body="\n".join(lines))


@functools.cache
def _module(lanes: int, code: int, dtype: np.dtype):
    from .epilogue import ACTIVATIONS

    return module(f"direct_conv_{BLOCKS[lanes]}x{lanes}_{ACTIVATIONS[code][0]}_{dtype.name}", _source(lanes, code, dtype),
                  slp=True)


def lanes_for(out_width: int) -> int:
    """The widest block of output pixels that fits a row of `out_width`, or 0 if none does."""
    return next((lanes for lanes in LANES if out_width >= lanes), 0)


# Taps a strided convolution needs for this kernel to pay: each image is dealt to the stride's phases
# one pixel at a time first. With 27 and 48 taps (a MobileNet stem, 3x3 stride 2 over 3 channels; a
# ViT's 4x4 stride-4 patches) the columns' product was 10-15% faster; with 144 (a 1-D model's 9 taps
# over 16 channels, stride 2) the direct kernel was 0.7x its time on one core.
MIN_STRIDED_TAPS = 64


def usable(dtype, out_channels: int, out_width: int, groups: int, stride: int = 1, taps: int = 0) -> bool:
    """Whether this kernel runs such a convolution: numba present, float32 or float64, no groups, at
    a row at least as wide as the narrowest block, as many output channels as its block has, and along
    the rows a stride of 1 or MIN_STRIDED_TAPS taps (`taps`: input channels times the window's size)."""
    lanes = lanes_for(out_width)
    return (available() and np.dtype(dtype) in DTYPES and groups == 1 and lanes > 0 and out_channels >= BLOCKS[lanes]
            and (stride == 1 or taps >= MIN_STRIDED_TAPS))


@functools.lru_cache(maxsize=256)
def _offsets(channels, kh, kw, dh, dw, sw, rows, cols) -> np.ndarray:
    """Each tap (c, i, j)'s offset in the buffer (channels, rows, sw phases, cols), in w's order."""
    c, i, j = np.meshgrid(np.arange(channels), np.arange(kh), np.arange(kw), indexing="ij")
    offsets = (c * rows + i * dh) * (sw * cols) + (j * dw) % sw * cols + (j * dw) // sw
    return offsets.reshape(-1).astype(np.int64)  # (kept: the kernel's signatures take writable arrays)


@functools.lru_cache(maxsize=64)
def _starts(outs: int, block: int) -> np.ndarray:
    """The first channel of each block; the last block ends at the last channel (overlapping if need be)."""
    return np.array([min(o, outs - block) for o in range(0, outs, block)], np.int64)


def conv2d(x: np.ndarray, w: np.ndarray, stride, padding, dilation, out: np.ndarray | None = None,
           bias: np.ndarray | None = None, code: int = NONE, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """Cross-correlation of x (N, C, H, W) with w (O, C, kh, kw), as torch's conv2d (no groups), into
    `out`; with a bias (O values of the output's dtype) or an activation code, the epilogue
    (`epilogue.bias_activation` along the channels) on each image as soon as it is done. The images
    split over the team where each part gets MIN_SPLIT_FLOPS and the executor leaves this vertex the
    cores."""
    from .im2col import MIN_SPLIT_FLOPS, operands

    x, out, oh, ow = operands(x, w, stride, padding, dilation, out)
    n_images, channels, height, width = x.shape
    outs, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dtype = x.dtype
    lanes = lanes_for(ow)
    if lanes == 0 or outs < BLOCKS[lanes]:  # (its blocks would write outside the output)
        raise InternalError(f"the direct kernel takes rows of {LANES[-1]} outputs or more and as many channels as a "
                            f"block: got {ow} and {outs} (`usable` says where it runs)")
    block = BLOCKS[lanes]
    starts = _starts(outs, block)
    # (blocks, taps, block): a block's weights for one tap side by side, its taps in order
    weights = np.ascontiguousarray(np.asarray(w, dtype).reshape(outs, -1)[starts[:, None] + np.arange(block)]
                                   .transpose(0, 2, 1))
    rows, cols = height + 2 * ph, -(-(width + 2 * pw) // sw)
    offsets = _offsets(channels, kh, kw, dh, dw, sw, rows, cols)
    apply = bias is not None or code != NONE
    bias = np.zeros(outs, dtype) if bias is None else np.ascontiguousarray(bias, dtype).reshape(-1)
    parts = min(n_images, int(2.0 * out.size * channels * kh * kw // MIN_SPLIT_FLOPS))
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    parts = max(parts, 1)
    bufs = np.empty((parts, channels, rows, sw, cols), dtype)
    kernels = _module(lanes, code, dtype)
    t = dtype.type
    kernels.split(x, weights, offsets, starts, out, bufs, bias, t(p0), t(p1), apply, ph, pw, sh, parts, CONTROL,
                  kernels.job.address)
    return out


# -- transposed convolutions whose tiles do not overlap ---------------------------------------------
_TILES = '''
import numpy as np


@numba.njit(cache=True, nogil=True)
def tiles(p, out, bias, p0, p1, apply):
    """Each input pixel's kh x kw outputs, computed as channels (o, i, j) of p, to their tile of out,
    with the epilogue (bias along the channels, activation) where `apply`: the stores of a tile row
    interleaved in one loop, so that it vectorizes."""
    n_images, outs, oh, ow = out.shape
    height, width = p.shape[2], p.shape[3]
    pf, of = p.reshape(-1), out.reshape(-1)
    plane = height * width
    for n in range(n_images):
        for o in range(outs):
            b = bias[o] if apply else bias.dtype.type(0)
            for y in range(height):
                for i in range({kh}):
                    row = ((n * outs + o) * oh + y * {kh} + i) * ow
                    first = ((n * outs + o) * {kh} + i) * {kw} * plane + y * width
                    if apply:
                        for x in range(width):
{applied}
                    else:
                        for x in range(width):
{plain}
'''


def _tiles_source(kh: int, kw: int, code: int) -> str:
    pad = " " * 28
    applied = "\n".join(f"{pad}of[np.uint64(row + x * {kw} + {j})] = activate(pf[np.uint64(first + {j} * plane + x)] + b, "
                        "p0, p1)" for j in range(kw))
    plain = "\n".join(f"{pad}of[np.uint64(row + x * {kw} + {j})] = pf[np.uint64(first + {j} * plane + x)]"
                      for j in range(kw))
    return passes_source(code) + _TILES.format(kh=kh, kw=kw, applied=applied, plain=plain)


@functools.cache
def _tiles(kh: int, kw: int, code: int):
    from .epilogue import ACTIVATIONS

    return module(f"conv_transpose_tiles_{kh}x{kw}_{ACTIVATIONS[code][0]}", _tiles_source(kh, kw, code)).tiles


_scratches = threading.local()


def _scratch(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """This thread's scratch array of this shape and dtype, kept between calls: a fresh one of 4 MB
    (a batch of 64) cost 2 ms of page faults a call here, three times the convolution."""
    kept = getattr(_scratches, "arrays", None)
    if kept is None:
        kept = _scratches.arrays = {}
    key = (shape, np.dtype(dtype).str)
    if key not in kept:
        if len(kept) >= 4:  # (a few shapes a thread: a model's own)
            kept.pop(next(iter(kept)))
        kept[key] = np.empty(shape, dtype)
    return kept[key]


def tiles_apart(w_shape, stride, padding, dilation, output_padding, groups: int) -> bool:
    """Whether a transposed convolution's tiles (kh x kw outputs an input pixel) neither overlap nor
    leave gaps: kernel = stride, no padding, dilation or groups (a UNet's 2x2 upsampling)."""
    return (tuple(w_shape[2:]) == tuple(stride) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1)
            and tuple(output_padding) == (0, 0) and groups == 1)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, bias: np.ndarray | None = None,
                     code: int = NONE, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """torch's conv_transpose2d of x (N, C, H, W) with w (C, O, kh, kw) where `tiles_apart`: each input
    pixel's tile is a 1x1 convolution's O * kh * kw channels (the direct kernel), moved to its place
    with the epilogue (a bias along the channels, an activation code; GELU's pass after, its flags
    its own). The numpy form (im2col's input gradient) took 162 us on a UNet's (8, 32, 16, 16) 2x2 one."""
    from .epilogue import ACTIVATIONS, bias_activation

    n_images, channels, height, width = x.shape
    _, outs, kh, kw = w.shape
    dtype = np.result_type(x.dtype, w.dtype)
    # (O * kh * kw, C, 1, 1): row (o, i, j) holds the weights of tap (i, j) of output channel o
    weights = np.asarray(w, dtype).reshape(channels, outs * kh * kw).T.reshape(outs * kh * kw, channels, 1, 1)
    per_tap = conv2d(x, weights, (1, 1), (0, 0), (1, 1), _scratch((n_images, outs * kh * kw, height, width), dtype))
    if out is None or not out.flags.c_contiguous:
        out = np.empty((n_images, outs, height * kh, width * kw), dtype)
    after = ACTIVATIONS[code][1]  # (GELU's pass: flags of its own)
    apply = (bias is not None or code != NONE) and not after
    t = dtype.type
    b = np.zeros(outs, dtype) if bias is None else np.ascontiguousarray(bias, dtype).reshape(-1)
    _tiles(kh, kw, NONE if after else code)(per_tap, out, b, t(p0), t(p1), apply)
    if after:
        bias_activation(out, bias, 1, code, p0, p1)
    return out
