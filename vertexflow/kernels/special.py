"""erf and the exact GELU for float32 in one vectorised pass, accurate to 1 ulp of the correctly rounded value;
relu's derivative in one pass.

scipy's erf is a scalar loop (about 9 ns an element here), and an exported GELU
spends most of its time in it. For float32 the value is computed in float64
from a rational approximation fitted for this purpose,

    erf(x) = x * P(x^2) / Q(x^2)   for |x| < 4,   sign(x) from 4 on

(P of degree 6, Q of degree 5; relative error below 5e-9 on [0, 4], where
float32's ulp is 6e-8; erf(4) rounds to 1 in float32), then rounded: against
scipy's float64 erf rounded to float32 it is exact for 98% of inputs and never
more than 1 ulp off (tests/test_kernels.py checks this on millions of points).
Both forms below compute the same expression: numba's as one compiled pass,
numpy's in passes over temporaries (the fallback).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import available

# Fitted by least squares on [0, 4] (t = x^2), reweighted toward minimax; see the module docstring.
P = (1.1283791694472862, 0.18514514369789892, 0.05430601403859256, 0.0038468958298329753,
     0.0003794243489241302, 4.680651923816975e-06, -1.3173811957978288e-08)
Q = (1.0, 0.4974140271655471, 0.11393159318427781, 0.015455906703194718, 0.0013067843513348723,
     6.307372754002071e-05)
LIMIT = 4.0
SQRT_HALF = 0.7071067811865476


def _erf_numpy(x: np.ndarray) -> np.ndarray:
    """The same rational approximation in numpy passes, in float64 (the fallback's erf for float32)."""
    z = x.astype(np.float64)
    t = z * z
    p = np.full_like(t, P[-1])
    for c in reversed(P[:-1]):
        p *= t
        p += c
    q = np.full_like(t, Q[-1])
    for c in reversed(Q[:-1]):
        q *= t
        q += c
    with np.errstate(invalid="ignore", over="ignore"):
        value = z * p / q
    return np.where(np.abs(z) >= LIMIT, np.sign(z), value)


_compiled: dict[str, object] = {}
# Multiply-adds fused (one rounding instead of two, nothing else reordered): the polynomials in
# float64 then cost 1.4x less per element (a GELU of 64K elements, 65 -> 46 us), within the 1-ulp bound.
FUSED = {"contract"}


def _kernels():
    """The numba ufuncs (compiled at first use, cached on disk)."""
    global _erf64  # a module global for the ufuncs that call it (see norm._kernels)
    if not _compiled:
        import numba

        p0, p1, p2, p3, p4, p5, p6 = P
        q0, q1, q2, q3, q4, q5 = Q

        @numba.njit(inline="always", cache=True)
        def _erf64(x):
            if x >= LIMIT or x <= -LIMIT:  # 1 to float32 precision: exactly, so GELU's far tail is 0
                return 1.0 if x > 0 else -1.0
            t = x * x
            p = p0 + t * (p1 + t * (p2 + t * (p3 + t * (p4 + t * (p5 + t * p6)))))
            q = q0 + t * (q1 + t * (q2 + t * (q3 + t * (q4 + t * q5))))
            return x * p / q

        @numba.vectorize(["float32(float32)"], nopython=True, cache=True, fastmath=FUSED)
        def erf32(x):
            if x != x:
                return x
            return np.float32(_erf64(np.float64(x)))

        @numba.vectorize(["float32(float32)"], nopython=True, cache=True, fastmath=FUSED)
        def gelu32(x):
            if x != x:
                return x
            v = np.float64(x)
            return np.float32(0.5 * v * (1.0 + _erf64(v * SQRT_HALF)))

        @numba.vectorize(["float32(float32, float32)"], nopython=True, cache=True, fastmath=FUSED)
        def gelu_grad32(x, g):
            v = np.float64(x)
            cdf = 0.5 * (1.0 + _erf64(v * SQRT_HALF))
            pdf = 0.3989422804014327 * np.exp(-0.5 * v * v)
            return np.float32(np.float64(g) * (cdf + v * pdf))

        # g * (y > 0) as numpy computes it (the mask cast to g's type: -0.0 and NaN kept), y > 0 read
        # off y's bits (0 < bits <= those of inf): a float compare flags a NaN as invalid, and the
        # errstate that hid it cost more than the pass on an MLP's layer
        inf32, one32, zero32 = np.int32(0x7F800000), np.float32(1), np.float32(0)
        inf64 = np.int64(0x7FF0000000000000)

        @numba.njit(cache=True)
        def relu_grad32(g, y_bits, out):
            for i in range(g.size):
                bits = y_bits[i]
                out[i] = g[i] * (one32 if (bits > 0) & (bits <= inf32) else zero32)

        @numba.njit(cache=True)
        def relu_grad64(g, y_bits, out):
            for i in range(g.size):
                bits = y_bits[i]
                out[i] = g[i] * (1.0 if (bits > 0) & (bits <= inf64) else 0.0)

        _compiled.update(erf64=_erf64, erf32=erf32, gelu32=gelu32, gelu_grad32=gelu_grad32)
        _compiled.update({np.dtype(np.float32): (relu_grad32, np.int32), np.dtype(np.float64): (relu_grad64, np.int64)})
    return _compiled


def _into(value: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """A float64 result rounded to float32, into `out` when given."""
    if out is None:
        return value.astype(np.float32)
    np.copyto(out, value, casting="same_kind")
    return out


def erf32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """erf of a float32 array, float32 out."""
    if available():
        kernel = _kernels()["erf32"]
        with np.errstate(over="ignore", invalid="ignore"):  # the branch not taken may overflow
            return kernel(x) if out is None else kernel(x, out=out)
    with np.errstate(over="ignore", invalid="ignore"):
        value = _erf_numpy(x)
    value[np.isnan(x)] = np.nan
    return _into(value, out)


def gelu32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """0.5 x (1 + erf(x / sqrt 2)) of a float32 array, computed in float64, float32 out."""
    if available():
        kernel = _kernels()["gelu32"]
        with np.errstate(over="ignore", invalid="ignore"):
            return kernel(x) if out is None else kernel(x, out=out)
    v = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        value = 0.5 * v * (1.0 + _erf_numpy(v * SQRT_HALF))
    value[np.isnan(v)] = np.nan
    return _into(value, out)


def gelu_grad32(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g * d gelu(x)/dx for float32 arrays (computed in float64), float32 out."""
    if available():
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            return _kernels()["gelu_grad32"](x, g)
    v = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        cdf = 0.5 * (1.0 + _erf_numpy(v * SQRT_HALF))
    pdf = 0.3989422804014327 * np.exp(-0.5 * v * v)
    return (g * (cdf + v * pdf)).astype(np.float32)


# Below this many elements numpy's form costs less than the kernel's call.
RELU_GRAD_MIN = 4096
_INF_BITS = {np.dtype(np.float32): np.int32(0x7F800000), np.dtype(np.float64): np.int64(0x7FF0000000000000)}


def relu_grad(g: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """g * (y > 0), relu's derivative rule, in one pass for float arrays of one dtype, shape and
    layout (numpy's form makes a boolean mask, then casts it in the product: 2x slower on an MLP's
    (100, 250) layer; below a few thousand elements numpy's form costs less than the call)."""
    dtype = g.dtype
    flag = "C_CONTIGUOUS" if y.flags.c_contiguous else "F_CONTIGUOUS" if y.flags.f_contiguous else None
    if flag is None or g.size < RELU_GRAD_MIN or dtype != y.dtype or dtype.char not in "fd" or g.shape != y.shape or \
            (out is not None and (out.shape != g.shape or out.dtype != dtype or not out.flags[flag] or
                                  not g.flags[flag])) or not available():
        return np.multiply(g, y > 0, out=out)
    if not g.flags[flag]:
        # g laid out otherwise (a product computed transposed hands on a column-major value): copied in
        # y's layout (numpy's blocked copy) and computed in place there; numpy's form took 1.5-2.5x longer
        out = g = np.array(g, order=flag[0])
    elif out is None:
        out = np.empty_like(g)  # laid out as both are, as numpy's form makes it
    kernel, bits = _kernels()[dtype]
    kernel(g.ravel("K"), y.ravel("K").view(bits), out.ravel("K"))
    return out


def relu_grad_for(shape: tuple[int, ...], dtype) -> Callable:
    """relu_grad for g and y of this shape and dtype (a compiled step's): the kernel called straight
    where both come row-major, without relu_grad's checks; otherwise relu_grad itself."""
    dtype = np.dtype(dtype)
    if dtype not in _INF_BITS or math.prod(shape) < RELU_GRAD_MIN or not available():
        return relu_grad
    kernel, bits = _kernels()[dtype]

    def bound(g, y, out=None):
        if out is None and g.shape == shape and y.shape == shape and g.dtype == dtype and y.dtype == dtype and \
                g.flags.c_contiguous and y.flags.c_contiguous:
            out = np.empty(shape, dtype)
            kernel(g.reshape(-1), y.reshape(-1).view(bits), out.reshape(-1))
            return out
        return relu_grad(g, y, out)

    return bound
