"""A convolution's images as C jobs on the team: one gemm per image and group, from the image's columns.

The column convolution (`im2col.py`) builds each image's windows as columns,
(C * kh * kw, OH * OW), in a scratch buffer that stays in cache, and
multiplies them by the weights with CBLAS's gemm (numpy's own OpenBLAS,
through its address, `im2col.gemm_address`), single-threaded, straight into
the output, already NCHW. A 1x1 convolution at stride 1 without padding
needs no columns: the image is its own. Here a run of images is one C job
(`team_loops.run_jobs`), which the team's workers run without the GIL; with
a product's epilogue, the epilogue's own pass (`epilogue.passes_source`,
compiled from the same source with its flags: the bits of the pass after)
runs on each image while it is in cache.

Before, the runs of images were Python parts on the team, each calling a
compiled loop or numpy's product, and a split of Python parts costs 20-40 us
waiting for the GIL: a MobileNet block's 24 -> 144 expansion at batch 8
(14 MFLOP) ran on two threads in about the time of one (126 us; 94 as jobs).
Which thread computes an image never changes its bits: one gemm call per
image and group on one BLAS thread, as before.
"""

from __future__ import annotations

import functools
import hashlib
import inspect

import numpy as np

from ..machine import blas_split, threads_in_force
from . import available
from .epilogue import ACTIVATIONS, NONE, passes_source
from .generated import module
from .team import CONTROL, team

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Work (a product's flops) a part must get for a split to pay: a split of C jobs costs about 3 us. An
# inception block's 16 -> 16 1x1 convolution at batch 8 (1 MFLOP) took 23 us whole, 19 in two parts.
MIN_PART_FLOPS = 5e5
# A job's arguments: int64 slots, p0 and p1 read as float64 (`split` writes them, `job_*` reads them).
SLOTS = dict((name, k) for k, name in enumerate(
    "X IMAGES CHANNELS HEIGHT WIDTH WEIGHTS GROUPS PER_GROUP ROWS OUT OH OW COLS FIRST LAST KH KW SH SW PH PW DH DW "
    "GEMM BIAS APPLY P0 P1".split()))
RECORD = len(SLOTS)

_TEMPLATE = '''
import numpy as np
from numba import types

from vertexflow.kernels.atomics import call_gemm, pointer_at
from vertexflow.kernels.im2col import _kernels
from vertexflow.kernels.team_loops import run_jobs

# (im2col.py's text hash {digest}: a change to its column kernel writes a new file)
_columns = _kernels()["columns"]


@numba.njit(cache=True, nogil=True)
def images(x, weights, out, cols, first, last, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, gemm, bias, p0, p1, apply):
    """Images [first, last) of out (N, G, O / G, OH * OW): each one's columns (the image itself for a 1x1
    window at stride 1 without padding), a gemm per group, then the epilogue's pass on the image."""
    groups, per_group, rows = weights.shape
    pixels, size = oh * ow, x.itemsize
    own = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    one, zero = weights.dtype.type(1), weights.dtype.type(0)
    image_size = x.shape[1] * x.shape[2] * x.shape[3]
    for n in range(first, last):
        if own:
            source = x.ctypes.data + n * image_size * size
        else:
            _columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
            source = cols.ctypes.data
        for g in range(groups):
            call_gemm(gemm, per_group, pixels, rows, one, weights.ctypes.data + g * per_group * rows * size, rows,
                      source + g * rows * pixels * size, pixels, zero,
                      out.ctypes.data + (n * groups + g) * per_group * pixels * size, pixels)
        if apply:  # the epilogue's own pass on the image, in cache: its bits
            planes(out[n:n + 1].reshape((1, groups * per_group, pixels)), bias, p0, p1)
{jobs}

@numba.njit(cache=True, nogil=True)
def split(x, weights, out, bufs, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, gemm, bias, p0, p1, apply, parts, control,
          routine):
    """The images in `parts` C jobs on the team, each with its own columns' buffer (one after another
    here where the team cannot take them)."""
    record = np.empty((parts, {RECORD}), np.int64)
    reals = record.view(np.float64)
    count = x.shape[0]
    for k in range(parts):
        record[k, {X}], record[k, {IMAGES}], record[k, {CHANNELS}] = x.ctypes.data, count, x.shape[1]
        record[k, {HEIGHT}], record[k, {WIDTH}] = x.shape[2], x.shape[3]
        record[k, {WEIGHTS}], record[k, {GROUPS}] = weights.ctypes.data, weights.shape[0]
        record[k, {PER_GROUP}], record[k, {ROWS}] = weights.shape[1], weights.shape[2]
        record[k, {OUT}], record[k, {OH}], record[k, {OW}] = out.ctypes.data, oh, ow
        record[k, {COLS}] = bufs.ctypes.data + k * bufs.strides[0]
        record[k, {FIRST}], record[k, {LAST}] = count * k // parts, count * (k + 1) // parts
        record[k, {KH}], record[k, {KW}], record[k, {SH}], record[k, {SW}] = kh, kw, sh, sw
        record[k, {PH}], record[k, {PW}], record[k, {DH}], record[k, {DW}] = ph, pw, dh, dw
        record[k, {GEMM}], record[k, {BIAS}], record[k, {APPLY}] = gemm, bias.ctypes.data, apply
        reals[k, {P0}], reals[k, {P1}] = p0, p1
    run_jobs(control, routine, parts, record.ctypes.data, {RECORD} * 8, 0)
'''

_JOB = '''
@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def job_{dtype}(index, arguments, extra):
    a = numba.carray(arguments, {RECORD}, np.int64)
    reals = numba.carray(arguments, {RECORD}, np.float64)
    x = numba.carray(pointer_at(a[{X}]), (a[{IMAGES}], a[{CHANNELS}], a[{HEIGHT}], a[{WIDTH}]), np.{dtype})
    weights = numba.carray(pointer_at(a[{WEIGHTS}]), (a[{GROUPS}], a[{PER_GROUP}], a[{ROWS}]), np.{dtype})
    pixels = a[{OH}] * a[{OW}]
    out = numba.carray(pointer_at(a[{OUT}]), (a[{IMAGES}], a[{GROUPS}], a[{PER_GROUP}], pixels), np.{dtype})
    cols = numba.carray(pointer_at(a[{COLS}]), (a[{CHANNELS}] * a[{KH}] * a[{KW}], pixels), np.{dtype})
    bias = numba.carray(pointer_at(a[{BIAS}]), a[{GROUPS}] * a[{PER_GROUP}], np.{dtype})
    images(x, weights, out, cols, a[{FIRST}], a[{LAST}], a[{KH}], a[{KW}], a[{SH}], a[{SW}], a[{PH}], a[{PW}],
           a[{DH}], a[{DW}], a[{OH}], a[{OW}], a[{GEMM}], bias, np.{dtype}(reals[{P0}]), np.{dtype}(reals[{P1}]),
           a[{APPLY}] != 0)
'''


@functools.cache
def _module(code: int):
    from . import im2col

    digest = hashlib.sha256(inspect.getsource(im2col).encode()).hexdigest()[:12]
    jobs = "".join(_JOB.format(dtype=d.name, RECORD=RECORD, **SLOTS) for d in DTYPES)
    source = passes_source(code) + _TEMPLATE.format(digest=digest, jobs=jobs, RECORD=RECORD, **SLOTS)
    return module(f"image_jobs_{ACTIVATIONS[code][0]}", source)


@functools.cache
def _job(code: int, dtype: np.dtype) -> int:
    return getattr(_module(code), f"job_{dtype.name}").address


def usable(x_shape, w_shape, groups: int, out_hw, dtype) -> bool:
    """Whether these jobs run a convolution of this input and weight: numba present, float32 or
    float64, numpy's OpenBLAS with 64-bit sizes (`im2col.gemm_address`), two images or more (one
    image is one product, which OpenBLAS splits itself), and images whose products are matrices
    (numpy calls gemv for one output channel a group or one output pixel, whose sums round otherwise)."""
    from .im2col import gemm_address

    dtype = np.dtype(dtype)
    return (x_shape[0] >= 2 and w_shape[0] // groups > 1 and out_hw[0] * out_hw[1] > 1 and available()
            and dtype in DTYPES and gemm_address(dtype) != 0)


def conv2d(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int, out: np.ndarray | None = None,
           bias: np.ndarray | None = None, code: int = NONE, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """Cross-correlation of x (N, C, H, W) with w (O, C / groups, kh, kw), as torch's conv2d, into `out`
    where it is row-major; with a bias (O values) or an activation code, the epilogue
    (`epilogue.bias_activation` along the channels) on each image as soon as it is done. For the
    convolutions `usable` accepts."""
    from .im2col import gemm_address, operands

    x, out, oh, ow = operands(x, w, stride, padding, dilation, out)
    n_images, channels = x.shape[:2]
    outs, per_group, kh, kw = w.shape
    dtype = x.dtype
    weights = np.ascontiguousarray(w, dtype).reshape(groups, outs // groups, per_group * kh * kw)
    flat = out.reshape(n_images, groups, outs // groups, oh * ow)
    t = dtype.type
    apply = bias is not None or code != NONE
    bias = (np.zeros(outs if apply else 0, dtype) if bias is None else
            np.ascontiguousarray(bias, dtype).reshape(-1))
    gemm, compiled = gemm_address(dtype), _module(code)
    own = (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    parts = min(n_images, int(2.0 * out.size * per_group * kh * kw // MIN_PART_FLOPS))
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    geometry = (kh, kw, *stride, *padding, *dilation, oh, ow)
    with blas_split(max(1, parts)) as threads:  # BLAS single-threaded meanwhile: each gemm's bits alone
        bufs = np.empty((threads, 0 if own else channels * kh * kw, oh * ow), dtype)
        if threads <= 1:
            compiled.images(x, weights, flat, bufs[0], 0, n_images, *geometry, gemm, bias, t(p0), t(p1), apply)
        else:
            compiled.split(x, weights, flat, bufs, *geometry, gemm, bias, t(p0), t(p1), apply, threads, CONTROL,
                           _job(code, dtype))
    return out
