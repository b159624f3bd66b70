"""1x1 convolutions at stride 1: one product per image, (O, C) @ (C, H * W), already NCHW, in C jobs.

Each image's product is CBLAS's gemm (numpy's own OpenBLAS, through its
address, `im2col.gemm_address`), single-threaded, straight into the output;
with a product's epilogue, the epilogue's own pass (`epilogue.passes_source`,
compiled from the same source with its flags: the bits of the pass after)
runs on the image while it is in cache. The images split over the kernels'
team as C jobs (`team_loops.run_jobs`), which its workers run without the
GIL. Before, each image was a numpy product called from Python parts on the
team, and a split of Python parts costs 20-40 us waiting for the GIL: a
MobileNet block's 24 -> 144 expansion at batch 8 (14 MFLOP) ran on two
threads in about the time of one. Which thread computes an image never
changes its bits (one gemm call on one BLAS thread, as before).
"""

from __future__ import annotations

import functools

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
# int64 slots of a job's arguments: x, images, channels, pixels, w, outs, out, first, last, bias, apply,
# gemm, then p0 and p1 as float64
RECORD = 14

_TEMPLATE = '''
import numpy as np
from numba import types

from vertexflow.kernels.atomics import call_gemm, pointer_at
from vertexflow.kernels.team_loops import run_jobs

RECORD = {record}


@numba.njit(cache=True, nogil=True)
def products(x, w, out, first, last, bias, p0, p1, apply, gemm):
    """Images [first, last) of out (N, O, P) = w (O, C) @ x (N, C, P), each then its epilogue."""
    outs, channels = w.shape
    pixels, size = x.shape[2], x.itemsize
    one, zero = w.dtype.type(1), w.dtype.type(0)
    for n in range(first, last):
        call_gemm(gemm, outs, pixels, channels, one, w.ctypes.data, channels,
                  x.ctypes.data + n * channels * pixels * size, pixels, zero,
                  out.ctypes.data + n * outs * pixels * size, pixels)
        if apply:  # the epilogue's own pass on the image, in cache: its bits
            planes(out[n:n + 1], bias, p0, p1)
{jobs}

@numba.njit(cache=True, nogil=True)
def split(x, w, out, bias, p0, p1, apply, gemm, parts, control, routine):
    """The images in `parts` C jobs on the team (one after another here where it cannot take them)."""
    record = np.empty((parts, RECORD), np.int64)
    reals = record.view(np.float64)
    images = x.shape[0]
    for k in range(parts):
        record[k, 0], record[k, 1], record[k, 2], record[k, 3] = x.ctypes.data, images, x.shape[1], x.shape[2]
        record[k, 4], record[k, 5], record[k, 6] = w.ctypes.data, w.shape[0], out.ctypes.data
        record[k, 7], record[k, 8] = images * k // parts, images * (k + 1) // parts
        record[k, 9], record[k, 10], record[k, 11] = bias.ctypes.data, apply, gemm
        reals[k, 12], reals[k, 13] = p0, p1
    run_jobs(control, routine, parts, record.ctypes.data, RECORD * 8, 0)
'''

_JOB = '''
@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def job_{dtype}(index, arguments, extra):
    a = numba.carray(arguments, RECORD, np.int64)
    reals = numba.carray(arguments, RECORD, np.float64)
    x = numba.carray(pointer_at(a[0]), (a[1], a[2], a[3]), np.{dtype})
    w = numba.carray(pointer_at(a[4]), (a[5], a[2]), np.{dtype})
    out = numba.carray(pointer_at(a[6]), (a[1], a[5], a[3]), np.{dtype})
    bias = numba.carray(pointer_at(a[9]), a[5], np.{dtype})
    products(x, w, out, a[7], a[8], bias, np.{dtype}(reals[12]), np.{dtype}(reals[13]), a[10] != 0, a[11])
'''


@functools.cache
def _module(code: int):
    jobs = "".join(_JOB.format(dtype=d.name) for d in DTYPES)
    return module(f"pointwise_{ACTIVATIONS[code][0]}", passes_source(code) + _TEMPLATE.format(record=RECORD, jobs=jobs))


@functools.cache
def _job(code: int, dtype: np.dtype) -> int:
    return getattr(_module(code), f"job_{dtype.name}").address


def usable(x_shape, w_shape, dtype) -> bool:
    """Whether this kernel runs a 1x1 convolution at stride 1 of this input and weight: numba present,
    float32 or float64, numpy's OpenBLAS with 64-bit sizes (`im2col.gemm_address`), two images or more
    (one image is one product, which OpenBLAS splits itself), and images whose products are matrices
    (numpy calls gemv for one output channel or one pixel, whose sums round differently)."""
    from .im2col import gemm_address

    dtype = np.dtype(dtype)
    return (x_shape[0] >= 2 and w_shape[0] > 1 and x_shape[2] * x_shape[3] > 1 and available()
            and dtype in DTYPES and gemm_address(dtype) != 0)


def conv2d(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, bias: np.ndarray | None = None,
           code: int = NONE, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """The 1x1 convolution of x (N, C, H, W) by w (O, C, 1, 1) at stride 1, into `out` where it is
    row-major; with a bias (O values) or an activation code, the epilogue (`epilogue.bias_activation`
    along the channels) on each image as soon as it is done. For inputs `usable` accepts."""
    from .im2col import gemm_address

    n, c, h, wd = x.shape
    outs = w.shape[0]
    dtype = np.result_type(x.dtype, w.dtype)
    if out is None or not out.flags.c_contiguous:
        out = np.empty((n, outs, h, wd), dtype)
    x = np.ascontiguousarray(x, dtype).reshape(n, c, h * wd)
    weights = np.ascontiguousarray(w, dtype).reshape(outs, c)
    flat = out.reshape(n, outs, h * wd)
    t = dtype.type
    apply = bias is not None or code != NONE
    bias = (np.zeros(outs if apply else 0, dtype) if bias is None else
            np.ascontiguousarray(bias, dtype).reshape(-1))
    gemm, module_ = gemm_address(dtype), _module(code)
    parts = min(n, int(2.0 * out.size * c // MIN_PART_FLOPS))
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    with blas_split(max(1, parts)) as threads:  # BLAS single-threaded meanwhile: each gemm's bits alone
        if threads <= 1:
            module_.products(x, weights, flat, 0, n, bias, t(p0), t(p1), apply, gemm)
        else:
            module_.split(x, weights, flat, bias, t(p0), t(p1), apply, gemm, threads, CONTROL, _job(code, dtype))
    return out
