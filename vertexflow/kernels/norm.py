"""Row-wise normalizations over the last axis: softmax and layer norm, in passes without broadcasting.

numpy computes a softmax over short rows as a max reduction (np.maximum's
slow loop here), a broadcast subtract, exp, a sum and a broadcast divide: the
reductions and broadcasts over rows of 64 cost several times the exp. Here the
rows are walked directly: `softmax_rows` subtracts each row's max, numpy's
own SIMD exp runs on the whole buffer, and each row is divided by its sum;
`layer_norm_rows` takes each row's mean and variance (two passes over the
row, as numpy's mean of squared deviations) and writes the normalized,
scaled and shifted row. The numpy twins compute the same expressions.
"""

from __future__ import annotations

import numpy as np

from . import available

_compiled: dict[str, object] = {}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kernels():
    if not _compiled:
        import numba

        @numba.njit(cache=True, nogil=True)
        def shift_by_max(x, out):
            rows, n = x.shape
            for r in range(rows):
                m = x[r, 0]
                for k in range(1, n):
                    v = x[r, k]
                    if v > m or v != v:
                        m = v
                for k in range(n):
                    out[r, k] = x[r, k] - m

        @numba.njit(cache=True, nogil=True)
        def divide_by_sum(e):
            rows, n = e.shape
            for r in range(rows):
                s = e[r, 0] * 0
                for k in range(n):
                    s += e[r, k]
                for k in range(n):
                    e[r, k] = e[r, k] / s

        @numba.njit(cache=True, nogil=True)
        def layer_norm(x, weight, bias, eps, out):
            rows, n = x.shape
            for r in range(rows):
                s = 0.0
                for k in range(n):
                    s += x[r, k]
                mu = s / n
                v = 0.0
                for k in range(n):
                    d = x[r, k] - mu
                    v += d * d
                rstd = 1.0 / np.sqrt(v / n + eps)
                for k in range(n):
                    out[r, k] = (x[r, k] - mu) * rstd * weight[k] + bias[k]

        _compiled.update(shift_by_max=shift_by_max, divide_by_sum=divide_by_sum, layer_norm=layer_norm)
    return _compiled


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def usable(x: np.ndarray) -> bool:
    """Whether the row kernels run on x (numba, a float dtype it compiles, a last axis of at least 1)."""
    return available() and x.dtype in _DTYPES and x.ndim >= 1 and x.shape[-1] > 0 and x.size > 0


def softmax_last(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """softmax over the last axis: exp(x - max) / sum, row by row."""
    x = np.ascontiguousarray(x)
    if out is None or not out.flags.c_contiguous:
        out = np.empty_like(x)
    kernels = _kernels()
    kernels["shift_by_max"](_rows(x), _rows(out))
    np.exp(out, out=out)
    kernels["divide_by_sum"](_rows(out))
    return out


def layer_norm_last(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
                    out: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (statistics in float64)."""
    x = np.ascontiguousarray(x)
    if out is None or not out.flags.c_contiguous:
        out = np.empty_like(x)
    n = x.shape[-1]
    w = np.ascontiguousarray(np.broadcast_to(weight, (n,)), x.dtype)
    b = np.ascontiguousarray(np.broadcast_to(bias, (n,)), x.dtype)
    _kernels()["layer_norm"](_rows(x), w, b, float(eps), _rows(out))
    return out
