"""Products of a few rows by a matrix stored transposed, x @ W.T (an exported Linear at a small batch),
with the product's epilogue (bias and activation) applied as each part is done.

OpenBLAS packs both operands into blocks at every call; for a product of 3 to
8 rows by a weight matrix of hundreds of rows, packing the weights costs as
much as the arithmetic, and the product ran about 2x slower than onnxruntime's,
which packs its weights once at load. The weights of an exported Linear are
stored (out, in): each output is a dot product of a row of x with a row of W,
both contiguous. So the kernel here takes blocks of 4 rows of x (2 or 1 at the
edge) and 4 rows of W and keeps their 16 dot products in registers (LLVM vectorizes the loop
along the shared axis, each accumulator a vector), each block of W read once
by every block of x in turn, nothing packed. A block's rows of W lie a page apart
where rows are shorter than a page (`PAGE`): weights out of the caches streamed
10-20% faster so (`bench/small_products.py --weights 8`).

The columns split over the kernels' team in whole groups of blocks (the tail
in the last part), as C jobs that the workers run without the GIL
(`team_loops.run_jobs`: a split costs about 3 us, where a split whose parts
take the GIL costs 10 or more). Which loop computes an output never depends
on the split, so neither do the bits. The sums are reassociated (vector
lanes), so they differ from OpenBLAS's in the last bits, as two BLAS
libraries do. Each part then runs the epilogue's own pass (`epilogue.py`,
compiled from the same source with the same flags: the same bits as the
epilogue after the product) on its columns, while they are in its cache.
"""

from __future__ import annotations

import functools

import numpy as np

from ..machine import threads_in_force
from . import available
from .epilogue import NONE, passes_source
from .team import CONTROL, team

ROWS, COLUMNS = 4, 4  # the block of outputs kept in registers
# Rows this kernel takes: 3 to 8, where it ran 1.3-3.4x faster than numpy's OpenBLAS on two threads
# (`python bench/small_products.py`, weights of 256 x 512 to 1024 x 512); at 2 rows it was faster on
# the larger weights only (512 x 1024: 23 against 73 us; 512 x 512: 20 against 13); at 16 rows
# OpenBLAS's packed blocks were about as fast (0.8-1.3x the kernel's time), at 32 faster.
MIN_ROWS, MAX_ROWS = 3, 8
# Multiply-adds below which numpy's call is cheaper than this kernel's (a 4 x 64 x 256 product took
# 5.7 us here against numpy's 3.0; from 4 x 256 x 512 on, the kernel was faster).
MIN_PRODUCTS = 1 << 18
# Multiply-adds a part of a split product must get for the split to pay (a split costs about 3 us).
MIN_PART_PRODUCTS = 1 << 19
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# A block reads its rows of W a page apart where rows are shorter than a page: the CPU's prefetcher
# follows one stream a 4 KB page, so four rows side by side in one or two pages streamed as one or two.
PAGE = 4096
RECORD = 12  # int64 slots of a job's arguments: x, w, c, rows, depth, columns, j0, j1, bias, p0, p1, apply

_TEMPLATE = """
import numba
import numpy as np
from numba import types

from vertexflow.kernels.atomics import pointer_at
from vertexflow.kernels.team_loops import run_jobs


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={{'reassoc', 'contract'}})
def dots(x, w, c, j0, j1, zero):  # c[:, j0:j1] = x @ w[j0:j1].T, j0 a multiple of the group
    rows, depth = x.shape
    spread = max(1, {page} // (depth * x.itemsize))
    group = {columns} * spread
    j = j0
    while j < j1:
        if j + group <= j1:  # a whole group: `spread` blocks, each of rows a page apart
            width, step, starts, advance = {columns}, spread, spread, group
        else:  # the tail: blocks of contiguous rows, then single ones
            width = {columns} if j + {columns} <= j1 else 1
            step, starts, advance = 1, 1, width
        for start in range(starts):
            jb = j + start
            i = 0
            while i < rows:
                height = {rows} if i + {rows} <= rows else 2 if i + 2 <= rows else 1
{blocks}
                i += height
        j += advance


@numba.njit(cache=True, nogil=True)
def part(x, w, c, j0, j1, zero, bias, p0, p1, apply):  # columns j0:j1, then their epilogue
    dots(x, w, c, j0, j1, zero)
    if apply:
        for i in range(c.shape[0]):  # row by row: contiguous, so the pass vectorizes
            rows(c[i, j0:j1].reshape((1, j1 - j0)), bias[j0:j1], p0, p1)
{jobs}

@numba.njit(cache=True, nogil=True)
def split(x, w, c, parts, control, routine, bias, p0, p1, apply):  # the columns in `parts` jobs on the team
    columns = w.shape[0]
    group = {columns} * max(1, {page} // (x.shape[1] * x.itemsize))
    blocks = columns // group
    record = np.empty((parts, {record}), np.int64)
    reals = record.view(np.float64)
    for k in range(parts):
        record[k, 0], record[k, 1], record[k, 2] = x.ctypes.data, w.ctypes.data, c.ctypes.data
        record[k, 3], record[k, 4], record[k, 5] = x.shape[0], x.shape[1], columns
        record[k, 6] = blocks * k // parts * group
        record[k, 7] = columns if k == parts - 1 else blocks * (k + 1) // parts * group
        record[k, 8], record[k, 11] = bias.ctypes.data, apply
        reals[k, 9], reals[k, 10] = p0, p1
    run_jobs(control, routine, parts, record.ctypes.data, {record} * 8, 0)
"""

_JOB = """
@numba.cfunc(types.void(types.int32, types.voidptr, types.int32), cache=True)
def job_{dtype}(index, arguments, extra):
    a = numba.carray(arguments, {record}, np.int64)
    reals = numba.carray(arguments, {record}, np.float64)
    x = numba.carray(pointer_at(a[0]), (a[3], a[4]), np.{dtype})
    w = numba.carray(pointer_at(a[1]), (a[5], a[4]), np.{dtype})
    c = numba.carray(pointer_at(a[2]), (a[3], a[5]), np.{dtype})
    bias = numba.carray(pointer_at(a[8]), a[5], np.{dtype})
    part(x, w, c, a[6], a[7], np.{dtype}(0), bias, np.{dtype}(reals[9]), np.{dtype}(reals[10]), a[11] != 0)
"""


def _block(rows: int, columns: int, indent: str) -> list[str]:
    """One block: `rows` rows of x from i, `columns` rows of w from jb, `step` apart, their dot products
    into c."""
    lines = [f"{indent}x{r} = x[i + {r}]" for r in range(rows)]
    lines += [f"{indent}w{u} = w[jb + {u} * step]" for u in range(columns)]
    lines += [f"{indent}s{r}_{u} = zero" for r in range(rows) for u in range(columns)]
    lines.append(f"{indent}for k in range(depth):")
    lines += [f"{indent}    y{u} = w{u}[k]" for u in range(columns)]
    lines += [f"{indent}    s{r}_{u} += x{r}[k] * y{u}" for r in range(rows) for u in range(columns)]
    lines += [f"{indent}c[i + {r}, jb + {u} * step] = s{r}_{u}" for r in range(rows) for u in range(columns)]
    return lines


def _source(code: int) -> str:
    """The kernels for an activation code: the epilogue's passes (`rows`), `dots`, `part`, a C job per
    dtype (its arguments a row of RECORD int64), and `split`."""
    blocks = []
    shapes = [(rows, columns) for columns in (COLUMNS, 1) for rows in (ROWS, 2, 1)]
    for k, (rows, columns) in enumerate(shapes):
        blocks.append("                else:" if k == len(shapes) - 1 else
                      f"                {'if' if k == 0 else 'elif'} height == {rows} and width == {columns}:")
        blocks += _block(rows, columns, " " * 20)
    jobs = "".join(_JOB.format(dtype=d.name, record=RECORD) for d in DTYPES)
    return passes_source(code) + _TEMPLATE.format(rows=ROWS, columns=COLUMNS, record=RECORD, page=PAGE,
                                                  blocks="\n".join(blocks), jobs=jobs)


@functools.cache
def _module(code: int):
    from . import epilogue, generated

    return generated.module(f"products_{epilogue.ACTIVATIONS[code][0]}", _source(code))


@functools.cache
def _job(code: int, dtype: np.dtype) -> int:
    """The address of the C job for this activation and dtype."""
    return getattr(_module(code), f"job_{dtype.name}").address


def group(depth: int, dtype) -> int:
    """The columns a group of blocks covers (as `dots` and `split` compute it): COLUMNS times the rows of W
    a page holds. Parts split at whole groups, so every column's block is the same however many parts."""
    return COLUMNS * max(1, PAGE // (depth * np.dtype(dtype).itemsize))


def takes(a: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> bool:
    """Whether this kernel computes a @ w.T (into `out`): both 2-D and row-major, of one dtype (float32 or
    float64), a of MIN_ROWS to MAX_ROWS rows, MIN_PRODUCTS multiply-adds or more, `out` None or row-major."""
    return (a.ndim == 2 and MIN_ROWS <= a.shape[0] <= MAX_ROWS and w.ndim == 2 and a.dtype == w.dtype
            and a.size * w.shape[0] >= MIN_PRODUCTS and a.dtype in DTYPES and a.flags.c_contiguous
            and w.flags.c_contiguous and (out is None or out.flags.c_contiguous) and available())


def times_transposed(a: np.ndarray, w: np.ndarray, out: np.ndarray | None = None, bias: np.ndarray | None = None,
                     code: int = NONE, p0: float = 0.0, p1: float = 0.0) -> np.ndarray:
    """a @ w.T into a row-major `out` (made if None), for operands `takes` accepts; then, with a bias (a
    contiguous vector of the columns' length, a's dtype) or an activation code, the epilogue
    (`epilogue.bias_activation` along the last axis). The columns split over the team where each part
    gets MIN_PART_PRODUCTS multiply-adds and the executor leaves this vertex the cores."""
    rows, depth = a.shape
    columns = w.shape[0]
    if out is None:
        out = np.empty((rows, columns), a.dtype)
    t = a.dtype.type
    apply = bias is not None or code != NONE
    if bias is None:  # an epilogue without a bias adds zeros, as epilogue.bias_activation does
        bias = np.zeros(columns if apply else 0, a.dtype)
    module = _module(code)
    parts = min(columns // group(depth, a.dtype), rows * depth * columns // MIN_PART_PRODUCTS)
    if parts > 1:
        parts = min(parts, threads_in_force()) if team() is not None else 1
    if parts <= 1:
        module.part(a, w, out, 0, columns, t(0), bias, t(p0), t(p1), apply)
    else:
        module.split(a, w, out, parts, CONTROL, _job(code, a.dtype), bias, t(p0), t(p1), apply)
    return out
