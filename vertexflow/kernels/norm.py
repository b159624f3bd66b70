"""Row-wise normalizations over the last axis: softmax and layer norm, in passes without broadcasting.

numpy computes a softmax over short rows as a max reduction (np.maximum's
slow loop here), a broadcast subtract, exp, a sum and a broadcast divide: the
reductions and broadcasts over rows of 64 cost several times the exp. Here the
rows are walked directly. A float32 softmax and every layer norm run as C jobs
over whole rows on the kernels' team (`norm_jobs.py`): a float32 softmax in one
pass a block of rows with an exp of our own; `layer_norm_last` takes each row's
mean and variance (two passes over the row, as numpy's mean of squared
deviations, in the row's dtype) and writes the normalized, scaled and shifted
row. A float64 softmax subtracts each row's max, numpy's own SIMD exp runs on
the whole buffer, and each row is scaled by the inverse of its sum (within an
ulp of numpy's division). The numpy twins compute the same expressions.
"""

from __future__ import annotations

import functools

import numpy as np

from ..machine import threads_in_force
from . import available
from .team import CONTROL, over_rows, team

_compiled: dict[str, object] = {}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kernels():
    # Kernels calling other kernels find them as module globals, not as variables of this function: a
    # closure over a compiled function got a new disk-cache entry in every process (the closure's
    # bytes hold the function's per-process id) and was compiled again each time.
    global _row_sum
    if not _compiled:
        import numba

        # Eight partial maxima and sums: one running value would make every row a chain of dependent
        # steps (a 64-wide row waited ~250 cycles on its own latency).
        @numba.njit(cache=True, nogil=True)
        def shift_by_max(x, out):
            rows, n = x.shape
            for r in range(rows):
                row, target = x[r], out[r]
                m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
                k = 0
                while k + 8 <= n:
                    v0, v1, v2, v3 = row[k], row[k + 1], row[k + 2], row[k + 3]
                    v4, v5, v6, v7 = row[k + 4], row[k + 5], row[k + 6], row[k + 7]
                    m0 = v0 if v0 > m0 else m0
                    m1 = v1 if v1 > m1 else m1
                    m2 = v2 if v2 > m2 else m2
                    m3 = v3 if v3 > m3 else m3
                    m4 = v4 if v4 > m4 else m4
                    m5 = v5 if v5 > m5 else m5
                    m6 = v6 if v6 > m6 else m6
                    m7 = v7 if v7 > m7 else m7
                    k += 8
                m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
                while k < n:
                    v = row[k]
                    m = v if v > m else m
                    k += 1
                # A NaN in the row makes its sum NaN below, so the whole row comes out NaN, as numpy's.
                for k in range(n):
                    target[k] = row[k] - m

        # The reduction in a function of its own, free to reorder its sums (fastmath "reassoc"): LLVM
        # then sums a row in SIMD lanes (eight partial sums by hand stayed scalar: a softmax's division
        # pass over 16,384 rows of 64 took 635 us, now 340 us).
        @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
        def _row_sum(row):
            s = row[0] * 0
            for k in range(row.shape[0]):
                s += row[k]
            return s

        @numba.njit(cache=True, nogil=True)
        def divide_by_sum(e):
            rows, n = e.shape
            for r in range(rows):
                row = e[r]
                inverse = 1 / _row_sum(row)  # a product per element instead of a division: within 1 ulp of e / s
                for k in range(n):
                    row[k] = row[k] * inverse

        _compiled.update(shift_by_max=shift_by_max, divide_by_sum=divide_by_sum)
    return _compiled


# Elements a C job of a row-wise pass must get for a split to pay: a split costs about 3 us and the
# next op's reads of the other core's cache; a float32 softmax does 16K elements in about 14 us.
MIN_JOB_ELEMENTS = 16384


@functools.cache
def _job(name: str) -> int:
    from . import norm_jobs

    return getattr(norm_jobs, name).address


def _parts(rows: int, elements: int) -> int:
    """The C jobs a row-wise pass over `elements` in `rows` rows runs in (1: on the caller)."""
    parts = min(rows, elements // MIN_JOB_ELEMENTS)
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    return max(parts, 1)


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def usable(x: np.ndarray) -> bool:
    """Whether the row kernels run on x (numba, a float dtype it compiles, a last axis of at least 1)."""
    return available() and x.dtype in _DTYPES and x.ndim >= 1 and x.shape[-1] > 0 and x.size > 0


def softmax_last(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """softmax over the last axis: exp(x - max) / sum, row by row (float32: one compiled pass a block of
    rows, split over the team in C jobs, `norm_jobs.py`)."""
    x = np.ascontiguousarray(x)
    if out is None or not out.flags.c_contiguous:
        out = np.empty_like(x)
    rows, out_rows = _rows(x), _rows(out)
    if x.dtype == np.float32:
        from . import norm_jobs

        nothing = np.empty(0, np.float32)
        norm_jobs.split(rows, out_rows, nothing, nothing, 0.0, _parts(rows.shape[0], x.size), CONTROL,
                        _job("softmax_job"))
        return out
    kernels = _kernels()

    def part(first: int, last: int) -> None:  # the three passes over a part's rows while they are in cache
        block = out_rows[first:last]
        kernels["shift_by_max"](rows[first:last], block)
        np.exp(block, out=block)
        kernels["divide_by_sum"](block)

    over_rows(part, rows.shape[0], x.size)
    return out


def mean_last(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The mean over the last axis of a row-major float array, keeping it as size 1 (a global average
    pool's): each row's sum in SIMD lanes over its length, in C jobs on the team (numpy's pairwise sum
    through its reduction machinery took 34 us on (8, 64, 256) float32, and 73 after a convolution)."""
    if out is None or not out.flags.c_contiguous:
        out = np.empty(x.shape[:-1] + (1,), x.dtype)
    from . import norm_jobs

    rows = _rows(x)
    norm_jobs.split(rows, out.reshape(-1, 1), rows[:0, 0], rows[:0, 0], 0.0, _parts(rows.shape[0], x.size), CONTROL,
                    _job("mean_job"))
    return out


def layer_norm_last(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
                    out: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, in x's dtype (as torch's and
    onnxruntime's CPU kernels compute a float32 layer norm: float64 statistics cost 1.6x the time)."""
    x = np.ascontiguousarray(x)
    if out is None or not out.flags.c_contiguous:
        out = np.empty_like(x)
    n = x.shape[-1]
    w = np.ascontiguousarray(np.broadcast_to(weight, (n,)), x.dtype)
    b = np.ascontiguousarray(np.broadcast_to(bias, (n,)), x.dtype)
    from . import norm_jobs

    rows, out_rows = _rows(x), _rows(out)
    norm_jobs.split(rows, out_rows, w, b, float(eps), _parts(rows.shape[0], x.size), CONTROL,
                    _job("layer_norm_job"))
    return out
