"""Row-wise normalizations over the last axis as C jobs on the kernels' team (`team_loops.run_jobs`: a
split costs about 3 us, where Python parts cost 24 and gated kernel parts 47): a float32 softmax in one
compiled pass a block of rows, and the layer norm of `norm.py` (float32 and float64). A call of one part
runs the same job on the caller, so the bits never depend on the split.

softmax, per row: the max, read as integers (a float's bits, negatives' flipped, order as the floats
do, NaN of either sign at an end), so the reduction vectorizes with no fast-math; exp(x - max) with an
exp of our own (below); the row's sum (its additions reordered, in SIMD lanes); the row scaled by the
sum's inverse. Rows go in blocks of 16, their sums first and their scaling after: a row scaled right
after its own sum waited on that sum's and the division's latency (a softmax over 2,048 rows of 64 took
170 us so, 111 blocked).

The exp: exp(t) = 2^n exp(r), n = round(t / ln 2) by adding and taking away 1.5 * 2^23, r = t - n ln 2
with ln 2 in two parts (each product exact), exp(r) by its Taylor polynomial of degree 7 (|r| <= 0.35:
truncation below 5e-9), 2^n built from its bits; results below float32's smallest normal scaled in two
steps (denormals, rounded once), below -103.97 zero; NaN kept. Against float64's exp rounded to float32
it is within 1 ulp (94% exact; numpy's own float32 exp: within 2, 61% exact) over a million draws
(tests/test_kernels.py).

layer norm, per row: the mean and the sum of squared deviations in two passes over the row, in its
dtype (as torch's and onnxruntime's CPU kernels compute a float32 layer norm), then the normalized,
scaled and shifted row.

Module-level functions of a module that imports numba, as `team_loops.py`'s, so that numba's disk cache
finds them again in the next process; imported where numba is (`norm.py`).
"""

from __future__ import annotations

import math

import llvmlite.ir as ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .atomics import pointer_at
from .team_loops import run_jobs

F = np.float32
LOG2E, LN2_HI, LN2_LO = F(1.4426950408889634), F(0.693145751953125), F(1.428606765330187e-06)
ROUND = F(12582912.0)  # 1.5 * 2^23: t / ln 2 + ROUND - ROUND is t / ln 2 rounded to an integer
LOWEST = F(-103.972084)  # exp below rounds to 0 in float32
TWO_TO_MINUS_64 = F(2.0**-64)
C0, C1, C2, C3, C4, C5, C6, C7 = (F(1 / math.factorial(k)) for k in range(8))
SIGN = np.int32(0x7FFFFFFF)
BLOCK = 16
# A job's arguments, int64 (eps as a float64's bits): x, out, weight, bias (addresses), rows, columns,
# first row, last row, eps
RECORD = 9


@intrinsic
def _as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@numba.njit(inline="always")
def _ordered(bits):
    """A float's bits as an integer that orders as the float does (the map is its own inverse)."""
    return bits ^ ((bits >> np.int32(31)) & SIGN)


@numba.njit(inline="always", fastmath={"contract"})
def exp32(t):
    clean = t if t >= LOWEST else LOWEST  # NaN and -inf too: computed on a number, set right below
    n = (clean * LOG2E + ROUND) - ROUND
    r = clean - n * LN2_HI
    r = r - n * LN2_LO
    p = C0 + r * (C1 + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))))
    k = np.int32(n)
    low = k < np.int32(-126)  # a denormal result: scaled by 2^(k + 64), then by 2^-64 (one rounding)
    e = p * _as_float32(((k + np.int32(64) if low else k) + np.int32(127)) << np.int32(23))
    e = e * TWO_TO_MINUS_64 if low else e
    e = e if t >= LOWEST else F(0)
    return e if t == t else t


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def exp_of(x, out):
    """out = exp(x), elementwise over 1-D float32 arrays (what the tests hold to float64's exp)."""
    for k in range(x.shape[0]):
        out[k] = exp32(x[k])


@numba.njit(cache=True, nogil=True)
def _row_max(row):
    m = _ordered(_bits(row[0]))
    for k in range(row.shape[0]):
        key = _ordered(_bits(row[k]))
        m = key if key > m else m
    return _as_float32(_ordered(m))


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _exp_shifted(row, m, target):
    for k in range(row.shape[0]):
        target[k] = exp32(row[k] - m)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_sum(row):
    s = F(0)  # float64 rows: unified to float64
    for k in range(row.shape[0]):
        s += row[k]
    return s


@numba.njit(cache=True, nogil=True)
def _scale(row, factor):
    for k in range(row.shape[0]):
        row[k] = row[k] * factor


@numba.njit(cache=True, nogil=True)
def softmax_rows(x, out, first, last):
    """softmax of rows first:last of x into out (2-D, row-major float32)."""
    sums = np.empty(BLOCK, np.float32)
    for start in range(first, last, BLOCK):
        stop = min(start + BLOCK, last)
        for r in range(start, stop):
            _exp_shifted(x[r], _row_max(x[r]), out[r])
            sums[r - start] = _row_sum(out[r])
        for r in range(start, stop):
            _scale(out[r], F(1) / sums[r - start])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def _row_statistics(row, count):
    """The row's mean and its sum of squared deviations, in the row's dtype (`count`: its length in
    that dtype; the float32 literals promote to nothing wider)."""
    s = np.float32(0)
    for k in range(row.shape[0]):
        s += row[k]
    mu = s / count
    v = np.float32(0)
    for k in range(row.shape[0]):
        d = row[k] - mu
        v += d * d
    return mu, v


@numba.njit(cache=True, nogil=True, error_model="numpy")
def layer_norm_rows(x, weight, bias, eps, count, out, first, last):
    """(x - mean) / sqrt(var + eps) * weight + bias of rows first:last of x into out, in x's dtype (eps
    and count, the rows' length, given in it)."""
    for r in range(first, last):
        row, target = x[r], out[r]
        mu, v = _row_statistics(row, count)
        rstd = np.float32(1) / np.sqrt(v / count + eps)
        for k in range(row.shape[0]):
            target[k] = (row[k] - mu) * rstd * weight[k] + bias[k]


@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def softmax_job(index, arguments, extra):
    a = numba.carray(arguments, RECORD, np.int64)
    x = numba.carray(pointer_at(a[0]), (a[4], a[5]), np.float32)
    out = numba.carray(pointer_at(a[1]), (a[4], a[5]), np.float32)
    softmax_rows(x, out, a[6], a[7])


@numba.njit(cache=True, nogil=True)
def _layer_norm_job(arguments, dtype):
    a = numba.carray(arguments, RECORD, np.int64)
    x = numba.carray(pointer_at(a[0]), (a[4], a[5]), dtype)
    out = numba.carray(pointer_at(a[1]), (a[4], a[5]), dtype)
    weight = numba.carray(pointer_at(a[2]), a[5], dtype)
    bias = numba.carray(pointer_at(a[3]), a[5], dtype)
    eps = dtype(numba.carray(arguments, RECORD, np.float64)[8])
    layer_norm_rows(x, weight, bias, eps, dtype(a[5]), out, a[6], a[7])


@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def layer_norm_job(index, arguments, bits):
    if bits == 64:
        _layer_norm_job(arguments, np.float64)
    else:
        _layer_norm_job(arguments, np.float32)


@numba.njit(cache=True, nogil=True)
def mean_rows(x, count, out, first, last):
    """Each row's mean, its sum (additions reordered, in SIMD lanes) over `count` in x's dtype."""
    for r in range(first, last):
        out[r] = _row_sum(x[r]) / count


@numba.njit(cache=True, nogil=True)
def _mean_job(arguments, dtype):
    a = numba.carray(arguments, RECORD, np.int64)
    x = numba.carray(pointer_at(a[0]), (a[4], a[5]), dtype)
    mean_rows(x, dtype(a[5]), numba.carray(pointer_at(a[1]), a[4], dtype), a[6], a[7])


@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def mean_job(index, arguments, bits):
    if bits == 64:
        _mean_job(arguments, np.float64)
    else:
        _mean_job(arguments, np.float32)


@numba.njit(cache=True, nogil=True)
def split(x, out, weight, bias, eps, parts, control, routine):
    """A job over x's rows into out in `parts` jobs of whole rows (one part: the same job, here); weight,
    bias and eps for a layer norm (empty and 0 otherwise); each job told the bits of x's dtype."""
    count = x.shape[0]
    record = np.empty((parts, RECORD), np.int64)
    reals = record.view(np.float64)
    for k in range(parts):
        record[k, 0], record[k, 1] = x.ctypes.data, out.ctypes.data
        record[k, 2], record[k, 3] = weight.ctypes.data, bias.ctypes.data
        record[k, 4], record[k, 5] = count, x.shape[1]
        record[k, 6], record[k, 7] = count * k // parts, count * (k + 1) // parts
        reals[k, 8] = eps
    run_jobs(control, routine, parts, record.ctypes.data, RECORD * 8, x.itemsize * 8)  # the jobs' `bits`
