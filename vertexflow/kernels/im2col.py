"""Convolutions as one matrix product per image, its columns built where the cache still holds them.

The im2col product lays every window of the whole batch out as columns,
(C * kh * kw, N * OH * OW), and multiplies once: for a batch of 64 images of
32x32 with 32 channels that is 75 MB of columns, written to memory and read
back by BLAS, and the product's (O, N, OH, OW) result still needs a transpose
to NCHW. Here each image's columns, (C * kh * kw, OH * OW), are built into a
scratch buffer small enough to stay in cache, and the product writes that
image's output (O, OH * OW) in place, already NCHW: no transpose, no batch-sized
temporary. The column kernel copies each tap's row of pixels as one run,
clipped to the image (the padding is never materialized).

Images are split over as many threads as BLAS may use at that moment
(`machine.blas_split`: the executor's share of the cores), each running its
products on one BLAS thread with a scratch buffer of its own. A run of images
is one compiled call that builds each image's columns and calls CBLAS's gemm
(numpy's own OpenBLAS, through its address) without taking the GIL between
images: numpy's product per image took it back each time, and two threads
took turns for it. (One product per image is too small for OpenBLAS to split
well, and two threads calling a two-thread OpenBLAS at once take turns.)
"""

from __future__ import annotations

import functools

import numpy as np

from ..machine import blas_split, cores, openblas_functions
from . import available
from .team import enabled, run_split, team

_compiled: dict[str, object] = {}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kernels():
    global _columns  # a module global for `image_products`, which calls it (see norm._kernels)
    if not _compiled:
        import numba

        from .atomics import call_gemm

        @numba.njit(cache=True, nogil=True)
        def _columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols):
            """Image n's windows as rows of cols: row (c, i, j) holds tap (i, j) of channel c at every output pixel."""
            channels, height, width = x.shape[1], x.shape[2], x.shape[3]
            # Flat arrays indexed by unsigned offsets: numba then knows no index is negative (no
            # wrap-around branch), and LLVM vectorizes the runs (4x faster than 2-D indexing here).
            source, target = x.reshape(-1), cols.reshape(-1)
            image = n * channels * height * width
            for c in range(channels):
                for i in range(kh):
                    for j in range(kw):
                        row = ((c * kh + i) * kw + j) * (oh * ow)
                        shift = j * dw - pw
                        # the output columns q whose input column q * sw + shift lies inside the image
                        lo = 0
                        while lo < ow and lo * sw + shift < 0:
                            lo += 1
                        hi = ow
                        while hi > lo and (hi - 1) * sw + shift >= width:
                            hi -= 1
                        if sh == 1 and sw == 1 and ow == width and hi > lo:
                            # Rows of the image and of cols have one length: the tap's rows inside the
                            # image are one run (a row's clipped ends take its neighbours' pixels,
                            # zeroed after), not one run of ow or fewer per row (4-7 ns each).
                            offset = i * dh - ph  # y = r + offset
                            first = min(max(-offset, 0), oh)
                            last = max(min(height - offset, oh), first)
                            for q in range(first * ow):
                                target[row + q] = 0
                            for q in range(last * ow, oh * ow):
                                target[row + q] = 0
                            if last > first:
                                start = image + (c * height + first + offset) * width + shift
                                base = row + first * ow
                                for q in range(lo, (last - first - 1) * ow + hi):
                                    target[np.uint64(base + q)] = source[np.uint64(start + q)]
                                for r in range(first, last):
                                    base = row + r * ow
                                    for q in range(lo):
                                        target[base + q] = 0
                                    for q in range(hi, ow):
                                        target[base + q] = 0
                            continue
                        for r in range(oh):
                            y = r * sh - ph + i * dh
                            base = row + r * ow
                            if y < 0 or y >= height:
                                for q in range(ow):
                                    target[base + q] = 0
                                continue
                            for q in range(lo):
                                target[base + q] = 0
                            start = image + (c * height + y) * width + shift
                            if sw == 1:
                                for q in range(lo, hi):
                                    target[np.uint64(base + q)] = source[np.uint64(start + q)]
                            else:
                                for q in range(lo, hi):
                                    target[np.uint64(base + q)] = source[np.uint64(start + q * sw)]
                            for q in range(hi, ow):
                                target[base + q] = 0

        @numba.njit(cache=True, nogil=True)
        def accumulate(cols, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, x):
            """The adjoint of `columns`: adds each row (c, i, j) of cols back onto image n of x at its tap."""
            channels, height, width = x.shape[1], x.shape[2], x.shape[3]
            source, target = cols.reshape(-1), x.reshape(-1)
            image = n * channels * height * width
            for c in range(channels):
                for i in range(kh):
                    for j in range(kw):
                        row = ((c * kh + i) * kw + j) * (oh * ow)
                        shift = j * dw - pw
                        lo = 0
                        while lo < ow and lo * sw + shift < 0:
                            lo += 1
                        hi = ow
                        while hi > lo and (hi - 1) * sw + shift >= width:
                            hi -= 1
                        for r in range(oh):
                            y = r * sh - ph + i * dh
                            if y < 0 or y >= height:
                                continue
                            base = row + r * ow
                            start = image + (c * height + y) * width + shift
                            if sw == 1:
                                for q in range(lo, hi):
                                    target[np.uint64(start + q)] += source[np.uint64(base + q)]
                            else:
                                for q in range(lo, hi):
                                    target[np.uint64(start + q * sw)] += source[np.uint64(base + q)]

        @numba.njit(cache=True, nogil=True)
        def image_products(x, weights, out, cols, first, last, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, gemm):
            """Images [first, last): each one's columns, then a product per group straight into out (N,
            G, O / G, OH * OW), by CBLAS's gemm at address `gemm`: the whole run in one call without
            the GIL (numpy's product per image took the GIL back between images)."""
            groups, per_group, rows = weights.shape
            pixels, size = oh * ow, x.itemsize
            one, zero = weights.dtype.type(1), weights.dtype.type(0)
            w_base, c_base, o_base = weights.ctypes.data, cols.ctypes.data, out.ctypes.data
            for n in range(first, last):
                _columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
                for g in range(groups):
                    call_gemm(gemm, per_group, pixels, rows, one, w_base + g * per_group * rows * size, rows,
                              c_base + g * rows * pixels * size, pixels, zero,
                              o_base + (n * groups + g) * per_group * pixels * size, pixels)

        _compiled.update(columns=_columns, accumulate=accumulate, image_products=image_products)
    return _compiled


@functools.cache
def gemm_address(dtype) -> int:
    """The address of CBLAS's gemm for this dtype in the OpenBLAS numpy calls, where it is an ILP64
    build (numpy's wheels: 64-bit sizes, which `atomics.call_gemm` passes); 0 elsewhere."""
    import ctypes

    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}.get(np.dtype(dtype))
    found = [function for path, function in openblas_functions([f"scipy_cblas_{name}64_", f"cblas_{name}64_"])
             if "numpy" in path] if name else []
    return ctypes.cast(found[0], ctypes.c_void_p).value if found else 0


def usable(dtype) -> bool:
    """Whether the column kernels run convolutions of this dtype (numba present, a dtype it compiles)."""
    return available() and np.dtype(dtype) in DTYPES


def operands(x: np.ndarray, w: np.ndarray, stride, padding, dilation, out: np.ndarray | None):
    """A convolution's input in its result dtype and row-major, its output (`out` where it is row-major,
    else a new array) and the output's height and width."""
    n_images, _, height, width = x.shape
    outs, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    dtype = np.result_type(x.dtype, w.dtype)
    if out is None or not out.flags.c_contiguous:
        out = np.empty((n_images, outs, oh, ow), dtype)
    return np.ascontiguousarray(x, dtype), out, oh, ow


def conv2d(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int,
           out: np.ndarray | None = None, then=None) -> np.ndarray:
    """Cross-correlation of x (N, C, H, W) with w (O, C / groups, kh, kw), as torch's conv2d, into `out`;
    then(out[first:last]) on each run of images as soon as they are done (an epilogue)."""
    x, out, oh, ow = operands(x, w, stride, padding, dilation, out)
    n_images, channels = x.shape[:2]
    outs, per_group, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dtype = x.dtype
    weights = np.ascontiguousarray(w, dtype).reshape(groups, outs // groups, per_group * kh * kw)
    flat = out.reshape(n_images, groups, outs // groups, oh * ow)
    kernels, gemm = _kernels(), gemm_address(dtype)
    columns = kernels["columns"]
    rows = per_group * kh * kw

    def images(first: int, last: int) -> None:
        cols = np.empty((channels * kh * kw, oh * ow), x.dtype)
        # Runs of images in one call (numpy calls gemv for a row or a column; one image pays the
        # longer call's argument checks for nothing: the inception block at batch 1 ran 4% slower).
        if gemm and last - first > 1 and outs // groups > 1 and oh * ow > 1:
            kernels["image_products"](x, weights, flat, cols, first, last, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow,
                                      gemm)
            return
        for n in range(first, last):
            columns(x, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
            for g in range(groups):
                np.matmul(weights[g], cols[g * rows:(g + 1) * rows], out=flat[n, g])

    split(n_images, images, 2.0 * n_images * outs * per_group * kh * kw * oh * ow,
          None if then is None else lambda first, last: then(out[first:last]), out.nbytes // n_images)
    return out


def conv2d_input_gradient(g: np.ndarray, w: np.ndarray, x_shape, stride, padding, dilation, groups: int,
                          out: np.ndarray | None = None) -> np.ndarray:
    """The gradient of conv2d's input, (N, C, H, W) from g (N, O, OH, OW): also the transposed convolution.

    Per image, the product of the transposed weights with g's image gives the columns, (C * kh * kw,
    OH * OW), which `accumulate` adds back onto the image at their taps.
    """
    n_images, channels, height, width = x_shape
    outs, per_group, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = g.shape[2], g.shape[3]
    dtype = np.result_type(g.dtype, w.dtype)
    if out is None or not out.flags.c_contiguous:
        out = np.empty((n_images, channels, height, width), dtype)
    g = np.ascontiguousarray(g, dtype).reshape(n_images, groups, outs // groups, oh * ow)
    # (G, C/G * kh * kw, O/G): each group's weights transposed, contiguous for the product
    weights = np.ascontiguousarray(np.ascontiguousarray(w, dtype).reshape(groups, outs // groups, -1)
                                   .transpose(0, 2, 1))
    accumulate = _kernels()["accumulate"]
    rows = per_group * kh * kw

    def images(first: int, last: int) -> None:
        cols = np.empty((channels * kh * kw, oh * ow), dtype)
        out[first:last] = 0
        for n in range(first, last):
            for k in range(groups):
                np.matmul(weights[k], g[n, k], out=cols[k * rows:(k + 1) * rows])
            accumulate(cols, n, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out)

    split(n_images, images, 2.0 * n_images * outs * per_group * kh * kw * oh * ow)
    return out


# Work (in a matrix product's flops) a thread must get for a split to pay. With a thread pool that
# slept between calls, waking it and sharing the cache cost about 100 us (8e6 then); the team's
# workers spin, and a split of Python parts costs 20-40 us: at 3e6 a MobileNet block at batch 8 ran
# 12% faster (its 1x1 convolutions, 14 MFLOP, split), the other models the same within noise.
MIN_SPLIT_FLOPS, MIN_POOL_SPLIT_FLOPS = 3e6, 8e6  # the team's threshold; the pool's (the team off)


# Output an epilogue reads while it is still in cache (the 2 MB L2 of each core here, with room for
# the inputs): a separate pass over a 9 MB MobileNet activation ran at memory speed on one core.
CHUNK_BYTES = 512 * 1024


def split_kernel(items: int, kernel, arguments, flops: float) -> None:
    """kernel(*arguments(first, last)) over [0, items) in the slices `split` would make, for a numba
    kernel that gives the GIL up (nogil): on the team, its workers take the GIL only to start their
    calls, once this thread has given it up for its own (`Team.split_kernel`: a split of Python parts
    that wait for the GIL cost 40 us, this one 10)."""
    parts = min(items, cores(), int(flops // MIN_SPLIT_FLOPS))
    crew = team() if parts > 1 else None
    if crew is None:
        split(items, lambda first, last: kernel(*arguments(first, last)), flops)
        return
    with blas_split(parts) as threads:
        if threads == 1:
            kernel(*arguments(0, items))
            return
        crew.split_kernel(kernel, arguments, items, threads)


def split(items: int, work, flops: float, then=None, item_bytes: int = 0) -> None:
    """work(first, last) over [0, items), in as many slices as `machine.blas_split` allows at the
    moment and `flops` (the whole work's) pays for, one on this thread and the others on the kernels'
    team (`team.run_split`; BLAS single-threaded meanwhile).

    `then(first, last)`, if given, runs on the same thread after the work of each run of items
    whose output (`item_bytes` each) fits in CHUNK_BYTES: a product's epilogue, while its output is
    in cache.
    """
    if then is not None:
        chunk, inner = max(1, CHUNK_BYTES // max(1, item_bytes)), work

        def work(first: int, last: int) -> None:
            for start in range(first, last, chunk):
                stop = min(start + chunk, last)
                inner(start, stop)
                then(start, stop)

    parts = min(items, cores(), int(flops // MIN_SPLIT_FLOPS))
    if parts > 1 and not enabled():
        parts = min(parts, int(flops // MIN_POOL_SPLIT_FLOPS))
    with blas_split(max(1, parts)) as threads:
        if threads == 1:
            work(0, items)
            return
        run_split(work, items, threads)
