"""Max and average pooling, one pass over each image plane.

numpy's form (`Window._reduce_taps`) makes a padded copy of the batch, then a
pass over the whole batch per tap, each reading a strided view: nine passes
for a 3x3 window, none of them in cache at batch 64. Here each plane is
copied once into a buffer bordered with the padding's value (in cache), and
each tap is one pass over the plane in numpy's order (row by row, then column
by column) with numpy's operations: the same bits. At stride 1 only. The maximum
propagates NaN as np.maximum does; the average's taps are added in order
(the caller divides, as before). Planes split over the kernels' team where
the input is large (`team.over_rows`).
"""

from __future__ import annotations

import functools

import numpy as np

from . import available

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@functools.cache
def _kernel():
    import numba

    @numba.njit(inline="always")
    def combine(m, v, take_max):  # np.maximum (the first if it is NaN or not below), or the sum
        if take_max:
            return m if (m != m or m >= v) else v
        return m + v

    @numba.njit(inline="always")
    def pool(x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, take_max, first, last):
        height, width = x.shape[2], x.shape[3]
        oh, ow = out.shape[2], out.shape[3]
        cols = buf.shape[1]
        xf, of, bf, tf = x.reshape(-1), out.reshape(-1), buf.reshape(-1), scratch.reshape(-1)
        buf[:] = fill
        for p in range(first, last):
            for y in range(height):  # the plane into the buffer's inside; its border stays `fill`
                source, target = (p * height + y) * width, (y + ph) * cols + pw
                for col in range(width):
                    bf[np.uint64(target + col)] = xf[np.uint64(source + col)]
            # The output as rows of the buffer's width (scratch): output t = r * cols + q reads its taps
            # at t + offset, so each tap is one long vectorized loop over the plane (a loop per output
            # row was 16 outputs long here), the columns past ow computed and dropped.
            for i in range(kh):
                for j in range(kw):
                    offset = i * dh * cols + j * dw
                    if i == 0 and j == 0:
                        for t in range(oh * cols):
                            tf[np.uint64(t)] = bf[np.uint64(t + offset)]
                    else:
                        for t in range(oh * cols):
                            tf[np.uint64(t)] = combine(tf[np.uint64(t)], bf[np.uint64(t + offset)], take_max)
            for r in range(oh):
                for q in range(ow):
                    of[np.uint64((p * oh + r) * ow + q)] = tf[np.uint64(r * cols + q)]

    # one kernel for each, `take_max` a constant in it: its branch folded away before the loops vectorize
    @numba.njit(cache=True, nogil=True)
    def maximum(x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, first, last):
        pool(x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, True, first, last)

    @numba.njit(cache=True, nogil=True)
    def total(x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, first, last):
        pool(x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, False, first, last)

    return maximum, total


def usable(dtype, stride) -> bool:
    """Whether this kernel pools such images: numba present, float32 or float64, stride 1 (at stride 2 a
    2x2 max pool of (8, 16, 32, 32) took 82 us here against numpy's passes' 71, its loads strided)."""
    return available() and np.dtype(dtype) in DTYPES and tuple(stride) == (1, 1)


def pool2d(x: np.ndarray, kernel, padding, dilation, take_max: bool) -> np.ndarray:
    """The maximum (take_max) or the sum of each window of x (N, C, H, W) at stride 1, padded with -inf
    or 0."""
    from .team import over_rows

    n_images, channels, height, width = x.shape
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    oh, ow = height + 2 * ph - dh * (kh - 1), width + 2 * pw - dw * (kw - 1)
    x = np.ascontiguousarray(x)
    out = np.empty((n_images, channels, oh, ow), x.dtype)
    fill = x.dtype.type(-np.inf if take_max else 0)
    kernel = _kernel()[0 if take_max else 1]
    rows, cols = height + 2 * ph, width + 2 * pw

    def arguments(first: int, last: int) -> tuple:
        buf, scratch = np.empty((rows, cols), x.dtype), np.empty((oh, cols), x.dtype)
        return (x, out, buf, scratch, kh, kw, ph, pw, dh, dw, fill, first, last)

    over_rows(arguments, n_images * channels, x.size * kh * kw, kernel=kernel)
    return out
