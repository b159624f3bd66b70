"""Matrix multiplication (2-D, batched with leading dimensions broadcast, and vector cases), and
determinants."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, format_shape
from ..kernels import products
from .base import Op, broadcast_shapes, require_numeric


def computes_transposed(rows: int, cols: int) -> bool:
    """Whether a 2-D product of `rows` x `cols` with a transposed (column-major) right operand is
    computed as its transpose (b.T @ a.T), its value handed on in column-major order.

    OpenBLAS runs a product of 2 to 128 rows and at least twice as many columns with a transposed
    matrix (an exported Linear's x @ W.T at a small batch) 1.1-2.0x slower than the same product
    computed transposed (`python bench/matmul_layout.py`; from 256 rows on the two are within 6%,
    either way; with a row-major right operand, within 10%). The value comes out as a column-major
    array, which numpy's ufuncs and the next product read without a copy.
    """
    return 2 <= rows <= 128 and cols >= 2 * rows


class Matmul(Op):
    name = "matmul"
    blas = True
    writes_out = True
    vjp_reads_output = False
    vjp_fresh = True

    def infer(self, a: Spec, b: Spec) -> Spec:
        require_numeric(a, b)
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"needs arrays of at least 1 dimension, got {format_shape(a.shape)} @ {format_shape(b.shape)}")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka is not None and kb is not None and ka != kb:
            raise ShapeError(f"inner dimensions differ: {format_shape(a.shape)} @ {format_shape(b.shape)}")
        try:
            batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ShapeError:
            raise ShapeError(
                f"batch dimensions do not broadcast: {format_shape(a.shape)} @ {format_shape(b.shape)}"
            ) from None
        rows = a.shape[-2:-1] if a.ndim > 1 else ()
        cols = b.shape[-1:] if b.ndim > 1 else ()
        return Spec(batch + rows + cols, np.result_type(a.dtype, b.dtype))

    def forward(self, xp, a, b, out=None, transposed: bool = True):
        """a @ b; `transposed=False` never computes it transposed (`computes_transposed`): the derivative
        rules' products, whose values meet the forward sweep's row-major arrays in elementwise rules
        (relu's after an MLP's g @ W.T copied the column-major value back: 15 us more than it saved)."""
        if a.ndim > 2 and b.ndim == 2 and (out is None or out.flags.c_contiguous) and \
                (a.flags.c_contiguous or math.prod(a.shape[:-2]) > 1):
            # (..., k) @ (k, n) as one (rows, k) @ (k, n) product: numpy calls BLAS once per leading
            # index otherwise (a (64, 64, 64) @ (64, 256) product ran 2.5x slower), a row-major input or
            # not (a copy first: a ViT's (64, 64, 64) tokens, stored token-major, by a (64, 192)
            # projection took 920 us as 64 products, 617 copied and as one; one matrix is one product
            # already, which numpy makes without the copy)
            a = xp.ascontiguousarray(a)
            flat = xp.matmul(a.reshape(-1, a.shape[-1]), b, out=None if out is None else out.reshape(-1, b.shape[1]))
            return flat.reshape(*a.shape[:-1], b.shape[1]) if out is None else out
        # a few rows times a weight stored transposed (an exported Linear at a small batch): a kernel of
        # our own, which packs nothing (kernels/products.py)
        if xp is np and b.ndim == 2 and products.takes(a, b.T, out):
            return products.times_transposed(a, b.T, out)
        if transposed and a.ndim == 2 and 2 <= a.shape[0] <= 128 and b.ndim == 2 and xp is np and \
                computes_transposed(a.shape[0], b.shape[1]) and a.dtype == b.dtype and b.flags.f_contiguous and \
                not b.flags.c_contiguous:
            rows, cols = a.shape[0], b.shape[1]
            if out is None:
                flipped = xp.empty((cols, rows), a.dtype)
            elif out.flags.c_contiguous:
                flipped = out.reshape(cols, rows)  # out's memory, the value in column-major order
            elif out.flags.f_contiguous:
                flipped = out.T
            else:
                return xp.matmul(a, b, out=out)
            xp.matmul(b.T, a.T, out=flipped)
            return flipped.T
        if xp is np and a.ndim > 2 and a.shape[:-2] == b.shape[:-2] and _splits_by_batch(a, b):
            return _batch_split(a, b, out)
        return xp.matmul(a, b, out=out)

    def vjp(self, F, g, xs, y):
        # Promote vectors to matrices ((k,) -> (1, k) on the left, (k, 1) on the right),
        # take the matrix rule, then drop the added axes and sum out broadcast batches.
        a, b = xs
        need_a, need_b = F.needs_input_grad
        if F.ndim(a) == 2 and F.ndim(b) == 2:  # the common case: no axes to add, no batch to sum out
            return (F.matmul(g, F.transpose(b)) if need_a else None, F.matmul(F.transpose(a), g) if need_b else None)
        a_vec, b_vec = F.ndim(a) == 1, F.ndim(b) == 1
        a2 = F.expand_dims(a, 0) if a_vec else a
        b2 = F.expand_dims(b, 1) if b_vec else b
        g2 = g
        if a_vec:
            g2 = F.expand_dims(g2, -1 if b_vec else -2)
        if b_vec:
            g2 = F.expand_dims(g2, -1)
        ga = gb = None
        if need_a:
            ga = F.sum_to(F.matmul(g2, _swap_last(F, b2)), a2)
            ga = F.squeeze(ga, 0) if a_vec else ga
        if need_b:
            gb = F.sum_to(F.matmul(_swap_last(F, a2), g2), b2)
            gb = F.squeeze(gb, 1) if b_vec else gb
        return (ga, gb)

    def bind(self, xp, specs, out):
        a, b = specs
        return xp.matmul if _numpys_own(xp, a.shape, b.shape, True) else functools.partial(self.forward, xp)

    def bind_vjp(self, xp, needs, specs, out):
        a, b = specs
        if a.ndim != 2 or b.ndim != 2:
            return None
        need_a, need_b = needs
        # vjp's matrix rule, its products made as vjp makes them (numpy's own where forward would call it)
        by_g = xp.matmul if _numpys_own(xp, (a.shape[0], b.shape[1]), b.shape[::-1], False) else \
            functools.partial(self.forward, xp, transposed=False)
        of_g = xp.matmul if _numpys_own(xp, a.shape[::-1], (a.shape[0], b.shape[1]), False) else \
            functools.partial(self.forward, xp, transposed=False)

        def derivative(g, x, w, y):
            return (by_g(g, w.T) if need_a else None, of_g(x.T, g) if need_b else None)

        return derivative

    def cost(self, a: Spec, b: Spec) -> float:
        spec = self.infer(a, b)
        # BLAS does ~16 flops in the time a plain ufunc handles one element.
        k = a.shape[-1] or 1
        return 2.0 * k * math.prod(d or 1 for d in spec.shape) / 16.0


def _numpys_own(xp, a: tuple, b: tuple, transposed: bool) -> bool:
    """Whether `Matmul.forward` on 2-D operands of these concrete shapes calls numpy's matmul as it is,
    whatever their layouts: rows neither the small-product kernel takes nor, with `transposed`, a
    product computed transposed (the bound call then skips forward's checks)."""
    if xp is not np or len(a) != 2 or len(b) != 2 or None in a or None in b:
        return False
    rows, cols = a[0], b[1]
    if products.MIN_ROWS <= rows <= products.MAX_ROWS:
        return False
    return not (transposed and computes_transposed(rows, cols))


# OpenBLAS runs a product of fewer multiply-adds than this on one thread (its SMP threshold).
_ONE_THREAD_PRODUCT = 65536 * 4
# A stack worth splitting: about 200 us of small products on one core here (a tiny ViT's attention at
# batch 8, 4 MFLOP in 57 us, ran slower split; at batch 64, 34 MFLOP, 1.6x faster).
_MIN_STACK_SPLIT_FLOPS = 1.6e7


def _splits_by_batch(a, b) -> bool:
    """Whether a stack of products runs split over the kernels' team by its leading index: products
    OpenBLAS runs on one thread each (attention's heads), numpy calling them one after another."""
    from ..kernels import team

    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    return a.shape[0] >= 2 and m * k * n <= _ONE_THREAD_PRODUCT and \
        2.0 * math.prod(a.shape[:-2]) * m * k * n >= _MIN_STACK_SPLIT_FLOPS and \
        a.dtype == b.dtype and a.dtype.kind == "f" and team.team() is not None


def _batch_split(a, b, out):
    """a @ b, the stack split along its first axis as `kernels.im2col.split` splits images: each part
    one numpy call on its slices (views, whatever the strides), BLAS single-threaded meanwhile (so
    the bits do not change)."""
    from ..kernels.im2col import split

    if out is None:
        out = np.empty(a.shape[:-1] + b.shape[-1:], a.dtype)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    split(a.shape[0], lambda first, last: np.matmul(a[first:last], b[first:last], out=out[first:last]),
          2.0 * math.prod(a.shape[:-2]) * m * k * n)
    return out


def _swap_last(F, x):
    ndim = F.ndim(x)
    axes = tuple(range(ndim - 2)) + (ndim - 1, ndim - 2)
    return F.transpose(x, axes)


class Det(Op):
    """The determinant of each square matrix in the last two axes."""

    name = "det"

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind != "f" or x.ndim < 2 or (None not in x.shape[-2:] and x.shape[-1] != x.shape[-2]):
            raise ShapeError(f"det needs square floating-point matrices, got {format_shape(x.shape)} {x.dtype}")
        return Spec(x.shape[:-2], x.dtype)

    def forward(self, xp, x):
        return xp.asarray(xp.linalg.det(x), dtype=x.dtype)

    def vjp(self, F, g, xs, y):
        return (F.apply(DetGrad(), g, xs[0], y),)

    def cost(self, x: Spec) -> float:
        n = x.shape[-1] or 1
        return float(math.prod(d or 1 for d in x.shape[:-2]) * n**3 / 16.0)


class DetGrad(Op):
    """g * det(x) * inverse(x) transposed: the cofactor matrix, for invertible matrices. For a singular
    one this gives zeros where the cofactors may not be (torch's rule computes them by an SVD)."""

    name = "det_grad"

    def infer(self, g: Spec, x: Spec, y: Spec) -> Spec:
        return x

    def forward(self, xp, g, x, y):
        scale = (g * y)[..., None, None]
        inverse = xp.linalg.pinv(x)
        return (scale * xp.swapaxes(inverse, -1, -2)).astype(x.dtype, copy=False)


def det(x, name=None):
    return Det()(x, name=name)


def matmul(a, b, name=None):
    """a @ b with numpy's rules for vectors and batches."""
    return Matmul()(a, b, name=name)
