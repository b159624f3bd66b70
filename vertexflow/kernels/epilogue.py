"""A product's epilogue in one pass: bias added along one axis, then an activation, in place.

`bias_activation(out, bias, axis, activation)` computes, for every element,
act(out + bias[channel]) with the same float operations, in the same order,
as the separate vertices would (numpy's add, then the activation op's own
forward), so the result is the same to the bit: the epilogue rewrite
(`rewrites.py`) changes how many passes a step makes, never its values.
Activations with a vectorised pass of their own (numpy's sigmoid and tanh,
float64's GELU) run as the op's own forward after the bias pass; float32's
GELU is computed in the pass, as its own kernel computes it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import available
from .special import FUSED, gelu32
from .team import MIN_PART_ELEMENTS, over_rows

NONE, CLIP, HARD_SIGMOID, HARD_SWISH, GELU = 0, 1, 2, 3, 4
_compiled: dict[str, object] = {}
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_PASSES = """
# The epilogue's passes with `{name}` inlined (activations.py's text hash {digest}: a change there writes a new file).
import numba

from vertexflow.kernels.activations import {name} as activate


@numba.njit(cache=True, nogil=True, fastmath={fastmath!r}, error_model="numpy")
def rows(out, bias, p0, p1):  # the bias along the last axis (a matrix product's)
    outer, channels = out.shape
    for n in range(outer):
        row = out[n]
        for c in range(channels):
            row[c] = activate(row[c] + bias[c], p0, p1)


@numba.njit(cache=True, nogil=True, fastmath={fastmath!r}, error_model="numpy")
def planes(out, bias, p0, p1):  # the bias along an inner axis (a convolution's channels)
    outer, channels, inner = out.shape
    for n in range(outer):
        for c in range(channels):
            b = bias[c]
            line = out[n, c]
            for k in range(inner):
                line[k] = activate(line[k] + b, p0, p1)
"""


# Each activation's name in activations.py, and the fast-math flags of its passes.
ACTIVATIONS = {NONE: ("identity", False), CLIP: ("clip", False), HARD_SIGMOID: ("hard_sigmoid", False),
               HARD_SWISH: ("hard_swish", False), GELU: ("gelu", FUSED)}


def passes_source(code: int) -> str:
    """The source of the passes (`rows`, `planes`) for an activation code: the same text wherever they are
    compiled (here, and inside a product's kernel, `products.py`), so the same bits."""
    import hashlib
    import inspect

    from . import activations

    name, fastmath = ACTIVATIONS[code]
    digest = hashlib.sha256(inspect.getsource(activations).encode()).hexdigest()[:12]
    return _PASSES.format(name=name, digest=digest, fastmath=fastmath)


def _kernels():
    """One pair of passes per activation (a branch inside the loop would keep it from vectorizing),
    generated as source that imports its activation (`generated.py`): defined in a function around
    the activation, a pass was a closure, which numba's disk cache missed in every new process."""
    if not _compiled:
        from . import generated

        for code, (name, _) in ACTIVATIONS.items():
            passes = generated.module(f"epilogue_{name}", passes_source(code))
            _compiled[code] = (passes.rows, passes.planes)
    return _compiled


def bias_activation(out: np.ndarray, bias: np.ndarray | None, axis: int, code: int, p0: float,
                    p1: float) -> np.ndarray:
    """act(out + bias) in place, bias along `axis` (None: no bias).

    Without numba: numpy's add in place, then the activation's own forward.
    """
    if bias is not None or code != NONE:
        # A column-major value (a product computed transposed, ops/linalg.py) is its transpose in
        # row-major order: the same pass over its memory, the bias along the mirrored axis.
        view = out if out.flags.c_contiguous else out.T if out.flags.f_contiguous else None
        if available() and out.dtype in _DTYPES and view is not None:
            if view is not out:
                axis = out.ndim - 1 - axis
            kernel, as_shape = _geometry(_kernels()[code], view.shape, axis)
            b = np.zeros(as_shape[1], out.dtype) if bias is None else np.ascontiguousarray(bias, out.dtype).reshape(-1)
            t = out.dtype.type
            _over_outer(kernel, view.reshape(as_shape), b, t(p0), t(p1))
        else:
            if bias is not None:
                np.add(out, np.reshape(bias, (-1,) + (1,) * (out.ndim - axis - 1)), out=out)
            if code != NONE:
                out = _numpy_activation(out, code, p0, p1)
    return out


def bound(shape: tuple, dtype, axis: int, code: int, p0: float, p1: float):
    """`bias_activation` for outputs of this shape and dtype, as a call `apply(out, bias)`: the geometry,
    the kernel and the typed parameters decided once (0.8 us a call instead of 2.3 at batch 1, where a
    model's dozen epilogues cost more than their arithmetic). Other shapes or layouts take the general form."""
    dtype = np.dtype(dtype)
    general = functools.partial(bias_activation, axis=axis, code=code, p0=p0, p1=p1)
    if not (available() and dtype in _DTYPES) or not shape:
        return general
    kernels, t = _kernels()[code], dtype.type
    a, c = t(p0), t(p1)
    zeros = np.zeros(shape[axis], dtype)
    by_rows, as_rows = _geometry(kernels, shape, axis)
    by_columns, as_columns = _geometry(kernels, shape[::-1], len(shape) - 1 - axis)

    def apply(out, bias):
        if bias is None and code == NONE:
            return out
        if out.shape != shape or out.dtype != dtype:
            return general(out, bias)
        b = zeros if bias is None else bias.reshape(-1)
        if b.dtype != dtype or not b.flags.c_contiguous:
            return general(out, bias)
        if out.flags.c_contiguous:
            _over_outer(by_rows, out.reshape(as_rows), b, a, c)
        elif out.flags.f_contiguous:  # a product computed transposed: its transpose is row-major
            _over_outer(by_columns, out.T.reshape(as_columns), b, a, c)
        else:
            return general(out, bias)
        return out

    return apply


def _over_outer(kernel, out, bias, p0, p1) -> None:
    """kernel(out, ...) split along out's first axis over the kernels' team where it is large."""
    if out.size < 2 * MIN_PART_ELEMENTS:  # too small to split: no closure, no slices (batch 1's epilogues)
        kernel(out, bias, p0, p1)
        return
    over_rows(lambda first, last: (out[first:last], bias, p0, p1), out.shape[0], out.size, kernel)


def _geometry(kernels, shape: tuple, axis: int):
    """The kernel (rows or planes) for a row-major array of this shape with the bias along `axis`, and
    the shape it takes the array in: (outer, channels) or (outer, channels, inner)."""
    rows, planes = kernels
    outer, channels, inner = math.prod(shape[:axis]), shape[axis] if shape else 1, math.prod(shape[axis + 1:])
    return (rows, (outer, channels)) if inner == 1 else (planes, (outer, channels, inner))


def _numpy_activation(out, code, p0, p1):
    t = out.dtype.type
    if code == GELU:  # float32 only (the rewrite's choice)
        return gelu32(out, out=out)
    if code == CLIP:
        return np.clip(out, t(p0), t(p1), out=out)
    gate = np.multiply(out, t(p0))
    gate += t(p1)
    np.clip(gate, t(0), t(1), out=gate)
    if code == HARD_SIGMOID:
        out[...] = gate
        return out
    return np.multiply(gate, out, out=out)
