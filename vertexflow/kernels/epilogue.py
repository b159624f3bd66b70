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

from ..machine import threads_in_force
from . import available
from .special import FUSED, gelu32
from .team import CONTROL, team

NONE, CLIP, HARD_SIGMOID, HARD_SWISH, GELU = 0, 1, 2, 3, 4
_compiled: dict[str, object] = {}
_modules: dict[int, object] = {}
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


# The passes as C jobs over parts of the outer axis (`team_loops.run_jobs`, about 3 us a split): each
# element's arithmetic is the pass's own, so the bits never depend on the split.
_JOBS = """
import numpy as np
from numba import types

from vertexflow.kernels.atomics import pointer_at
from vertexflow.kernels.team_loops import run_jobs

RECORD = 9  # out, bias (addresses), outer, channels, inner, first, last, then p0 and p1 as float64
{jobs}

@numba.njit(cache=True, nogil=True)
def split(address, bias, outer, channels, inner, p0, p1, parts, control, routine):
    record = np.empty((parts, RECORD), np.int64)
    reals = record.view(np.float64)
    for k in range(parts):
        record[k, 0], record[k, 1] = address, bias.ctypes.data
        record[k, 2], record[k, 3], record[k, 4] = outer, channels, inner
        record[k, 5], record[k, 6] = outer * k // parts, outer * (k + 1) // parts
        reals[k, 7], reals[k, 8] = p0, p1
    run_jobs(control, routine, parts, record.ctypes.data, RECORD * 8, 0)
"""

_JOB = """
@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def job_{dtype}(index, arguments, extra):
    a = numba.carray(arguments, RECORD, np.int64)
    reals = numba.carray(arguments, RECORD, np.float64)
    bias = numba.carray(pointer_at(a[1]), a[3], np.{dtype})
    p0, p1 = np.{dtype}(reals[7]), np.{dtype}(reals[8])
    if a[4] == 1:
        rows(numba.carray(pointer_at(a[0]), (a[2], a[3]), np.{dtype})[a[5]:a[6]], bias, p0, p1)
    else:
        planes(numba.carray(pointer_at(a[0]), (a[2], a[3], a[4]), np.{dtype})[a[5]:a[6]], bias, p0, p1)
"""

# Elements a job must get for a split to pay: an exact GELU takes about 0.6 ns an element here (a
# batch-8 mixer's 512 x 256 epilogue, 77 us on one core), a bias with a clip about 0.1.
MIN_JOB_ELEMENTS = {"gelu": 8192}
MIN_CHEAP_JOB_ELEMENTS = 65536

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

        jobs = _JOBS.format(jobs="".join(_JOB.format(dtype=d.name) for d in _DTYPES))
        for code, (name, _) in ACTIVATIONS.items():
            passes = generated.module(f"epilogue_{name}", passes_source(code) + jobs)
            _compiled[code] = (passes.rows, passes.planes)
            _modules[code] = passes
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
            _over_outer(kernel, view.reshape(as_shape), b, t(p0), t(p1), code)
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
            _over_outer(by_rows, out.reshape(as_rows), b, a, c, code)
        elif out.flags.f_contiguous:  # a product computed transposed: its transpose is row-major
            _over_outer(by_columns, out.T.reshape(as_columns), b, a, c, code)
        else:
            return general(out, bias)
        return out

    return apply


def _over_outer(kernel, out, bias, p0, p1, code: int) -> None:
    """kernel(out, ...), split along out's first axis into C jobs on the kernels' team where it is large."""
    least = MIN_JOB_ELEMENTS.get(ACTIVATIONS[code][0], MIN_CHEAP_JOB_ELEMENTS)
    parts = min(out.shape[0], out.size // least)
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    if parts <= 1:
        kernel(out, bias, p0, p1)
        return
    inner = out.shape[2] if out.ndim == 3 else 1
    _modules[code].split(out.ctypes.data, bias, out.shape[0], out.shape[1], inner, float(p0), float(p1), parts,
                         CONTROL, _job(code, out.dtype))


@functools.cache
def _job(code: int, dtype: np.dtype) -> int:
    return getattr(_modules[code], f"job_{dtype.name}").address


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
