"""The activations a product's epilogue applies (`epilogue.py`), each inlined into the epilogue's pass.

Module-level functions, which the epilogue's passes (generated per activation, `generated.py`)
import by name: numba's disk cache then finds the passes again in the next process.
"""

from __future__ import annotations

import numba
import numpy as np

from .special import LIMIT, SQRT_HALF, P, Q


@numba.njit(inline="always")
def identity(v, p0, p1):
    return v


@numba.njit(inline="always")
def clip(v, p0, p1):  # np.clip's order: NaN kept
    v = p0 if v < p0 else v
    return p1 if v > p1 else v


@numba.njit(inline="always")
def hard_sigmoid(v, p0, p1):  # np.clip(v * alpha + beta, 0, 1): +0.0 below, as clip's bound
    g = v * p0 + p1
    # bounds in v's dtype: with an integer's 0 and 1 they were float64, and float32's pass, converting
    # each element there and back, did not vectorize (3.3x slower: 12.6 us for a (144, 16, 16) image)
    zero = abs(p0) * np.float32(0)
    one = zero + np.float32(1)
    g = zero if g < zero else g
    return one if g > one else g


@numba.njit(inline="always")
def hard_swish(v, p0, p1):
    return hard_sigmoid(v, p0, p1) * v


(c0, c1, c2, c3, c4, c5, c6), (d0, d1, d2, d3, d4, d5) = P, Q


@numba.njit(inline="always")
def gelu(v, p0, p1):
    """float32's GELU as special.gelu32 computes it, to the bit, with selects for its branches
    (branches inside the loop keep LLVM from vectorizing it: 1.3x slower on a ViT's FFN)."""
    w = np.float64(v)
    x = w * SQRT_HALF
    t = min(x * x, 16.0)  # |x| >= 4 (t >= 16) takes the sign below
    p = c0 + t * (c1 + t * (c2 + t * (c3 + t * (c4 + t * (c5 + t * c6)))))
    q = d0 + t * (d1 + t * (d2 + t * (d3 + t * (d4 + t * d5))))
    erf = x * p / q
    erf = (1.0 if x > 0 else -1.0) if abs(x) >= LIMIT else erf
    g = np.float32(0.5 * w * (1.0 + erf))
    return v if v != v else g
