"""Network ops: losses (cross_entropy, mse), conv2d by im2col, max and average pooling.

Images are NCHW. Convolution and pooling view their input as windows with
`as_strided` (no copy) and reduce or contract over them; their derivative
rules are helper ops that scatter the gradient back through the same windows.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..errors import InternalError, ShapeError
from ..graph import Spec, format_shape
from ..kernels import pool
from .base import Op, numel, require_float


# -- losses ------------------------------------------------------------------
class CrossEntropy(Op):
    """Mean softmax cross-entropy of logits (N, C) against integer labels (N,), fused and stable."""

    name = "cross_entropy"
    vjp_fresh = fresh_output = True

    def infer(self, logits: Spec, labels: Spec) -> Spec:
        require_float(logits)
        if logits.ndim != 2:
            raise ShapeError(f"logits must be (batch, classes), got {format_shape(logits.shape)}")
        if labels.dtype.kind not in "iu":
            raise ShapeError(f"labels must be integers (class indices), got {labels.dtype}")
        if labels.ndim != 1:
            raise ShapeError(f"labels must be (batch,), got {format_shape(labels.shape)}")
        n, m = logits.shape[0], labels.shape[0]
        if n is not None and m is not None and n != m:
            raise ShapeError(f"batch sizes differ: logits {format_shape(logits.shape)}, labels {format_shape(labels.shape)}")
        return Spec((), logits.dtype)

    def forward(self, xp, logits, labels):
        if xp is np:
            from ..kernels import loss

            if loss.usable(logits, labels):  # few classes: one compiled pass over the rows
                return loss.cross_entropy(logits, labels)
        _check_labels(labels, logits.shape[1])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = xp.log(xp.exp(shifted).sum(axis=1))
        picked = shifted[xp.arange(labels.shape[0]), labels]
        return (log_norm - picked).mean()

    def vjp(self, F, g, xs, y):
        logits, labels = xs
        return (F.apply(CrossEntropyGrad(), g, logits, labels), None)

    def bind_vjp(self, xp, needs, specs, out):
        rule = functools.partial(CrossEntropyGrad().forward, xp)

        def derivative(g, logits, labels, y):
            return (rule(g, logits, labels), None)

        return derivative

    def cost(self, logits: Spec, labels: Spec) -> float:
        return 6.0 * numel(logits)


def _check_labels(labels, classes: int) -> None:
    # numpy would silently wrap a negative label around; refuse it instead.
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values in [{int(labels.min())}, {int(labels.max())}]")


class CrossEntropyGrad(Op):
    """(softmax(logits) - one_hot(labels)) * g / N in one pass: cross_entropy's gradient, fused."""

    name = "cross_entropy_grad"

    def infer(self, g: Spec, logits: Spec, labels: Spec) -> Spec:
        return logits

    def forward(self, xp, g, logits, labels):
        if xp is np and np.ndim(g) == 0:
            from ..kernels import loss

            if loss.usable(logits, labels):
                return loss.cross_entropy_gradient(g, logits, labels)
        e = xp.exp(logits - logits.max(axis=1, keepdims=True))
        n = labels.shape[0]
        scale = g / logits.dtype.type(n)
        out = e * (scale / e.sum(axis=1, keepdims=True))
        out[xp.arange(n), labels] -= scale
        return out

    def vjp(self, F, gg, xs, y):
        g, logits, labels = xs
        need_g, need_logits, _ = F.needs_input_grad
        n = F.count(labels, None, F.dtype(logits))
        probs = F.softmax(logits, 1)
        dg = dlogits = None
        if need_g:
            diff = F.sub(probs, F.apply(OneHot(), labels, logits))
            dg = F.div(F.sum(F.mul(gg, diff)), n)
        if need_logits:
            u = F.mul(gg, F.div(g, n))
            dlogits = F.mul(probs, F.sub(u, F.sum(F.mul(u, probs), 1, keepdims=True)))
        return (dg, dlogits, None)

    def cost(self, g: Spec, logits: Spec, labels: Spec) -> float:
        return 5.0 * numel(logits)


class OneHot(Op):
    """One-hot rows for integer labels, shaped and typed like `like` (N, C)."""

    name = "one_hot"

    def infer(self, labels: Spec, like: Spec) -> Spec:
        return like

    def forward(self, xp, labels, like):
        out = xp.zeros_like(like)
        out[xp.arange(labels.shape[0]), labels] = 1
        return out

    def vjp(self, F, g, xs, y):
        return (None, None)


class MSE(Op):
    """Mean squared error over every element."""

    name = "mse"

    def infer(self, pred: Spec, target: Spec) -> Spec:
        require_float(pred, target)
        if pred.ndim != target.ndim or any(
            p is not None and t is not None and p != t for p, t in zip(pred.shape, target.shape)
        ):
            raise ShapeError(
                f"prediction and target shapes differ: {format_shape(pred.shape)} vs {format_shape(target.shape)}"
            )
        return Spec((), np.result_type(pred.dtype, target.dtype))

    def forward(self, xp, pred, target):
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target shapes differ: {pred.shape} vs {target.shape}")
        diff = pred - target
        return xp.mean(diff * diff)

    def vjp(self, F, g, xs, y):
        pred, target = xs
        need_p, need_t = F.needs_input_grad
        scale = F.div(F.mul(g, 2), F.count(pred, None, F.dtype(g)))
        grad = F.mul(F.sub(pred, target), scale)
        return (grad if need_p else None, F.neg(grad) if need_t else None)

    def cost(self, pred: Spec, target: Spec) -> float:
        return 3.0 * numel(pred)


# -- windows -----------------------------------------------------------------
def _pair(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ShapeError(f"{what} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _out_size(size, kernel, stride, padding, dilation):
    if size is None:
        return None
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Window:
    """Kernel geometry shared by conv and pooling: kernel, stride, padding, dilation per axis."""

    def _init_window(self, kernel, stride, padding, dilation):
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        if kernel is not None:
            self.kernel = _pair(kernel, "kernel_size")
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ShapeError(f"stride and dilation must be >= 1 and padding >= 0, got {self.stride}, {self.dilation}, {self.padding}")

    def _out_hw(self, h, w, kernel):
        return tuple(
            _out_size(size, k, s, p, d)
            for size, k, s, p, d in zip((h, w), kernel, self.stride, self.padding, self.dilation)
        )

    def _padded(self, xp, x, fill=0.0):
        ph, pw = self.padding
        if not (ph or pw):
            return x
        n, c, h, w = x.shape
        out = xp.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)  # np.pad's generality costs ~4x
        out[:, :, ph : ph + h, pw : pw + w] = x
        return out

    def _geometry(self, padded_shape, kernel):
        """(OH, OW) of the output, and for each tap (i, j) the slices of the padded image it reads."""
        h, w = padded_shape[2:]
        (kh, kw), (sh, sw), (dh, dw) = kernel, self.stride, self.dilation
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        taps = {(i, j): (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
                for i in range(kh) for j in range(kw)}
        return (oh, ow), taps

    def _windows(self, xp, x, kernel, fill=0.0):
        """View of x as (N, C, OH, OW, kh, kw) windows over the padded image."""
        x = self._padded(xp, x, fill)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = kernel, self.stride, self.dilation
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        s_n, s_c, s_h, s_w = x.strides
        shape, strides = (n, c, oh, ow, kh, kw), (s_n, s_c, s_h * sh, s_w * sw, s_h * dh, s_w * dw)
        if xp is np:
            return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
        return xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)  # cupy has no writeable=

    def _columns(self, xp, x, kernel):
        """x's windows laid out for one matrix product: (C * kh * kw, N * OH * OW), contiguous.

        Filled a tap at a time (kh * kw strided copies of the image), so every row
        is one tap of one channel over all positions: a product with the
        (O, C * kh * kw) weights gives the output channels as rows.
        """
        x = self._padded(xp, x)
        n, c = x.shape[:2]
        (oh, ow), taps = self._geometry(x.shape, kernel)
        kh, kw = kernel
        cols = xp.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
        by_channel = x.transpose(1, 0, 2, 3)
        for (i, j), (rows, columns) in taps.items():
            cols[:, i, j] = by_channel[:, :, rows, columns]
        return cols.reshape(c * kh * kw, n * oh * ow), (n, oh, ow)

    def _reduce_taps(self, xp, x, kernel, combine, fill=0.0):
        """combine(out, tap) over the taps of each window, in place, starting from the first tap.

        One window over the whole image (global pooling) is one reduction of each
        image's contiguous pixels instead (numpy reducing small strided axes is
        several times slower than a pass per tap, except there).
        """
        x = self._padded(xp, x, fill)
        if tuple(kernel) == x.shape[2:] and self.dilation == (1, 1):  # (before the taps: 256 of them for 16x16)
            return combine.reduce(x.reshape(x.shape[0], x.shape[1], -1), axis=2)[:, :, None, None]
        _, taps = self._geometry(x.shape, kernel)
        out = None
        for rows, columns in taps.values():
            tap = x[:, :, rows, columns]
            if out is None:
                out = tap.copy()
            else:
                combine(out, tap, out=out)
        return out

    def _scatter(self, xp, x_shape, dtype, kernel, parts):
        """Sum window-shaped contributions back into an image of x_shape.

        Args:
            parts: callable (i, j) -> (N, C, OH, OW) contribution of kernel tap (i, j).
        """
        n, c, h, w = x_shape
        ph, pw = self.padding
        out = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
        _, taps = self._geometry(out.shape, kernel)
        for (i, j), (rows, columns) in taps.items():
            out[:, :, rows, columns] += parts(i, j)
        return out[:, :, ph : ph + h, pw : pw + w]


def _groups(groups) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"groups must be an int >= 1, got {groups!r}")
    return int(groups)


def _check_image(x: Spec, what: str = "input") -> None:
    if x.ndim != 4:
        raise ShapeError(f"{what} must be NCHW (4 dimensions), got {format_shape(x.shape)}")


# -- convolution ---------------------------------------------------------------
class Conv2d(Op, Window):
    """2-D cross-correlation of x (N, C, H, W) with w (O, C, kh, kw), as PyTorch's conv2d."""

    name = "conv2d"
    blas = True
    writes_out = True

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self._init_window(None, stride, padding, dilation)
        self.groups = _groups(groups)

    def infer(self, x: Spec, w: Spec) -> Spec:
        require_float(x, w)
        _check_image(x)
        _check_image(w, "weight")
        g = self.groups
        if x.shape[1] is not None and w.shape[1] * g != x.shape[1]:
            per = f" ({w.shape[1]} per group, {g} groups)" if g > 1 else ""
            raise ShapeError(f"input has {x.shape[1]} channels, weight expects {w.shape[1] * g}{per}: "
                             f"{format_shape(x.shape)} * {format_shape(w.shape)}")
        if w.shape[0] % g:
            raise ShapeError(f"{w.shape[0]} output channels do not split into {g} groups")
        oh, ow = self._out_hw(x.shape[2], x.shape[3], w.shape[2:])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise ShapeError(f"kernel {format_shape(w.shape[2:])} does not fit input {format_shape(x.shape)} with padding {self.padding}")
        return Spec((x.shape[0], w.shape[0], oh, ow), np.result_type(x.dtype, w.dtype))

    def forward(self, xp, x, w, out=None, then=None, epilogue=None):
        """The convolution into `out` (or a new array); then(images), if given, on each run of output
        images as soon as they are done, by the thread that computed them (an epilogue, in cache).
        `epilogue`, (bias or None, activation code, p0, p1) of `kernels/epilogue.py`, is run by the
        kernel itself on each image or plane it stores, where `runs_epilogue` says it can."""
        kind = self.algorithm(xp, x.shape, w.shape, x.dtype)
        if kind in ("pointwise", "columns") and self._image_jobs(x.shape, w.shape, np.result_type(x.dtype, w.dtype)):
            from ..kernels import image_jobs

            out = image_jobs.conv2d(x, w, self.stride, self.padding, self.dilation, self.groups, out,
                                    *(epilogue or ()))
            if then is not None:
                then(out)
            return out
        if kind == "pointwise":
            # A 1x1 convolution is one product per image: (O, C) @ (C, H*W), already NCHW; the images
            # split over the threads BLAS may use (each product single-threaded, so the same bits).
            from ..kernels.im2col import split

            if epilogue is not None:
                raise InternalError("conv2d's pointwise product runs no epilogue here (runs_epilogue says where)")
            sh, sw = self.stride
            xs = x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x
            n, c, oh, ow = xs.shape
            result = out if out is not None and out.flags.c_contiguous else \
                np.empty((n, w.shape[0], oh, ow), np.result_type(x.dtype, w.dtype))
            flat, source, weights = result.reshape(n, w.shape[0], oh * ow), xs.reshape(n, c, oh * ow), \
                w.reshape(w.shape[0], c)
            split(n, lambda first, last: np.matmul(weights, source[first:last], out=flat[first:last]),
                  2.0 * flat.size * c, None if then is None else lambda first, last: then(result[first:last]),
                  result.nbytes // n)
            if out is not None and result is not out:
                out[...] = result
                return out
            return result
        if kind == "depthwise":
            from ..kernels.conv import depthwise

            return depthwise(x, w, self.stride, self.padding, self.dilation, lambda a: self._padded(xp, a), out,
                             then, epilogue)
        if kind == "direct":
            from ..kernels import direct_conv

            out = direct_conv.conv2d(x, w, self.stride, self.padding, self.dilation, out,
                                     *(epilogue or ()))
            if then is not None:
                then(out)
            return out
        if epilogue is not None:
            raise InternalError(f"conv2d's {kind} kernel runs no epilogue (runs_epilogue says which do)")
        if kind == "columns":
            from ..kernels import im2col

            return im2col.conv2d(x, w, self.stride, self.padding, self.dilation, self.groups, out, then)
        cols, (n, oh, ow) = self._columns(xp, x, w.shape[2:])  # (C*kh*kw, N*OH*OW)
        g = self.groups
        # One product per group, batched: a group's rows of cols are contiguous (channel-major).
        product = xp.matmul(w.reshape(g, w.shape[0] // g, -1), cols.reshape(g, -1, cols.shape[1]))
        by_image = product.reshape(w.shape[0], n, oh, ow).transpose(1, 0, 2, 3)
        if out is None:
            out = xp.ascontiguousarray(by_image)
        else:
            xp.copyto(out, by_image)
        if then is not None:
            then(out)
        return out

    def runs_epilogue(self, xp, x_shape, w_shape, dtype) -> bool:
        """Whether the kernel for these shapes runs a product's epilogue itself (`forward`'s `epilogue`)."""
        kind = self.algorithm(xp, x_shape, w_shape, dtype)
        return kind in ("direct", "depthwise") or (kind in ("pointwise", "columns") and
                                                   self._image_jobs(x_shape, w_shape, dtype))

    def _image_jobs(self, x_shape, w_shape, dtype) -> bool:
        """Whether a 1x1 or column convolution runs as `kernels/image_jobs.py`'s C jobs (two images or
        more, each a matrix product), not Python parts on the team."""
        from ..kernels import image_jobs

        return image_jobs.usable(x_shape, w_shape, self.groups, self._out_hw(x_shape[2], x_shape[3], w_shape[2:]),
                                 dtype)

    def algorithm(self, xp, x_shape, w_shape, dtype) -> str:
        """The kernel for these shapes: "pointwise" (1x1: one product per image), "depthwise" (one
        input channel per group, float32 or float64: a direct pass per plane), "direct" (no groups,
        float32 or float64 with numba, rows of at least 8 outputs, as many channels as a block has,
        64 taps where the rows are strided: blocks of outputs summed in registers,
        `kernels/direct_conv.py`), "columns" (float32 or
        float64 with numba: each image's columns built in cache, one product per image and group,
        images split over the BLAS threads), or "im2col" (the whole batch's columns, one product per
        group; cupy, and float16, which BLAS accumulates in float32)."""
        if xp is not np:
            return "im2col"
        if self.groups == 1 and tuple(w_shape[2:]) == (1, 1) and self.padding == (0, 0):
            return "pointwise"
        if self.groups > 1 and self.groups == x_shape[1] and w_shape[1] == 1 and dtype in (np.float32, np.float64):
            return "depthwise"
        from ..kernels import direct_conv, im2col

        out_width = self._out_hw(x_shape[2], x_shape[3], w_shape[2:])[1]
        if direct_conv.usable(dtype, w_shape[0], out_width, self.groups, self.stride[1], math.prod(w_shape[1:])):
            return "direct"
        if im2col.usable(dtype):
            return "columns"
        return "im2col"

    def vjp(self, F, g, xs, y):
        x, w = xs
        need_x, need_w = F.needs_input_grad
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return (
            F.apply(Conv2dGradInput(*geometry), g, w, x) if need_x else None,
            F.apply(Conv2dGradWeight(*geometry), g, x, w) if need_w else None,
        )

    def cost(self, x: Spec, w: Spec) -> float:
        out = self.infer(x, w)
        return 2.0 * numel(out) * math.prod(w.shape[1:]) / 16.0


class Conv2dGradInput(Op, Window):
    name = "conv2d_grad_input"
    blas = True

    def __init__(self, stride, padding, dilation, groups=1):
        self._init_window(None, stride, padding, dilation)
        self.groups = _groups(groups)

    def infer(self, g: Spec, w: Spec, x: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, g, w, x):
        return self._input_gradient(xp, g, w, x.shape)

    def _input_gradient(self, xp, g, w, x_shape):
        if xp is np and self.groups > 1 and self.groups == x_shape[1] and w.shape[1] == 1 and \
                g.dtype in (np.float32, np.float64):
            from ..kernels.conv import depthwise_grad_input

            ph, pw = self.padding
            padded = (*x_shape[:2], x_shape[2] + 2 * ph, x_shape[3] + 2 * pw)
            grad = depthwise_grad_input(g, w, padded, self.stride, self.dilation)
            return grad[:, :, ph:ph + x_shape[2], pw:pw + x_shape[3]]
        if xp is np and g.dtype == w.dtype and g.dtype in (np.float32, np.float64):
            from ..kernels import im2col

            if im2col.usable(g.dtype):  # per image: the columns' product, added back onto the image in cache
                return im2col.conv2d_input_gradient(g, w, x_shape, self.stride, self.padding, self.dilation,
                                                    self.groups)
        o, c, kh, kw = w.shape
        n, _, oh, ow = g.shape
        groups = self.groups
        by_channel = g.transpose(1, 0, 2, 3).reshape(groups, o // groups, -1)  # (G, O/G, N*OH*OW)
        weights = w.reshape(groups, o // groups, -1).transpose(0, 2, 1)  # (G, C/G*kh*kw, O/G)
        c = c * groups
        cols = xp.matmul(weights, by_channel).reshape(c, kh, kw, n, oh, ow)  # each tap's share
        return self._scatter(xp, x_shape, g.dtype, (kh, kw), lambda i, j: cols[:, i, j].transpose(1, 0, 2, 3))

    def vjp(self, F, h, xs, y):
        # Bilinear in (g, w): its adjoint in g is the convolution itself, in w the weight gradient.
        g, w, x = xs
        need_g, need_w, _ = F.needs_input_grad
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return (
            F.apply(Conv2d(*geometry), h, w) if need_g else None,
            F.apply(Conv2dGradWeight(*geometry), g, h, w) if need_w else None,
            None,
        )

    def cost(self, g: Spec, w: Spec, x: Spec) -> float:
        return 2.0 * numel(g) * math.prod(w.shape[1:]) / 16.0


class ConvTranspose2d(Conv2dGradInput):
    """Transposed 2-D convolution of x (N, C, H, W) with w (C, O / groups, kh, kw), as PyTorch's
    conv_transpose2d: the input gradient of the convolution with w, so its rules are that op's."""

    name = "conv_transpose2d"
    writes_out = True

    def __init__(self, stride=1, padding=0, dilation=1, groups=1, output_padding=0):
        super().__init__(stride, padding, dilation, groups)
        self.output_padding = _pair(output_padding, "output_padding")
        if any(p < 0 or p >= s for p, s in zip(self.output_padding, self.stride)):
            raise ShapeError(f"output_padding must be >= 0 and smaller than the stride, got {self.output_padding}")

    def _out_shape(self, x_shape, w_shape) -> tuple:
        sizes = tuple(None if h is None else (h - 1) * s - 2 * p + d * (k - 1) + op + 1
                      for h, k, s, p, d, op in zip(x_shape[2:], w_shape[2:], self.stride, self.padding, self.dilation,
                                                   self.output_padding))
        return (x_shape[0], w_shape[1] * self.groups) + sizes

    def infer(self, x: Spec, w: Spec) -> Spec:
        require_float(x, w)
        _check_image(x)
        _check_image(w, "weight")
        if x.shape[1] is not None and w.shape[0] != x.shape[1]:
            raise ShapeError(f"input has {x.shape[1]} channels, weight expects {w.shape[0]}: "
                             f"{format_shape(x.shape)} * {format_shape(w.shape)}")
        if w.shape[0] % self.groups:
            raise ShapeError(f"{w.shape[0]} input channels do not split into {self.groups} groups")
        shape = self._out_shape(x.shape, w.shape)
        if any(d is not None and d < 1 for d in shape[2:]):
            raise ShapeError(f"output {format_shape(shape)} is empty for {format_shape(x.shape)} with padding {self.padding}")
        return Spec(shape, np.result_type(x.dtype, w.dtype))

    def forward(self, xp, x, w, out=None, epilogue=None):
        """The transposed convolution into `out` (or a new array); `epilogue`, (bias or None, activation
        code, p0, p1) of `kernels/epilogue.py`, run by the kernel where `runs_epilogue` says it can."""
        if self.runs_epilogue(xp, x.shape, w.shape, np.result_type(x.dtype, w.dtype)):
            from ..kernels import direct_conv

            return direct_conv.conv_transpose2d(x, w, out, *(epilogue or ()))
        if epilogue is not None:
            raise InternalError("conv_transpose2d's kernel runs no epilogue here (runs_epilogue says where)")
        result = self._input_gradient(xp, x, w, self._out_shape(x.shape, w.shape))
        if out is not None and result is not out:
            out[...] = result
            return out
        return result

    def runs_epilogue(self, xp, x_shape, w_shape, dtype) -> bool:
        """Whether the kernel for these shapes runs a product's epilogue itself: the tiles of a
        transposed convolution apart (`kernels/direct_conv.tiles_apart`) and the direct kernel's
        1x1 convolution usable for them."""
        from ..kernels import direct_conv

        return (xp is np and direct_conv.tiles_apart(w_shape, self.stride, self.padding, self.dilation,
                                                     self.output_padding, self.groups)
                and direct_conv.usable(dtype, w_shape[1] * w_shape[2] * w_shape[3], x_shape[3], 1))

    def vjp(self, F, h, xs, y):
        x, w = xs
        need_x, need_w = F.needs_input_grad
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return (
            F.apply(Conv2d(*geometry), h, w) if need_x else None,
            F.apply(Conv2dGradWeight(*geometry), x, h, w) if need_w else None,
        )

    def cost(self, x: Spec, w: Spec) -> float:
        return 2.0 * numel(x) * math.prod(w.shape[1:]) * self.groups / 16.0


class Conv2dGradWeight(Op, Window):
    name = "conv2d_grad_weight"
    blas = True

    def __init__(self, stride, padding, dilation, groups=1):
        self._init_window(None, stride, padding, dilation)
        self.groups = _groups(groups)

    def infer(self, g: Spec, x: Spec, w: Spec) -> Spec:
        return Spec(w.shape, g.dtype)

    def forward(self, xp, g, x, w):
        if xp is np and self.groups > 1 and self.groups == x.shape[1] and w.shape[1] == 1 and \
                g.dtype in (np.float32, np.float64):
            from ..kernels.conv import depthwise_grad_weight

            return depthwise_grad_weight(g, self._padded(xp, x), w.shape, self.stride, self.dilation).astype(
                g.dtype, copy=False)
        cols, _ = self._columns(xp, x, w.shape[2:])  # (C*kh*kw, N*OH*OW)
        groups = self.groups
        by_channel = g.transpose(1, 0, 2, 3).reshape(groups, g.shape[1] // groups, -1)  # (G, O/G, N*OH*OW)
        per_group = cols.reshape(groups, -1, cols.shape[1]).transpose(0, 2, 1)  # (G, N*OH*OW, C/G*kh*kw)
        return xp.matmul(by_channel, per_group).reshape(w.shape).astype(g.dtype, copy=False)

    def vjp(self, F, h, xs, y):
        # Bilinear in (g, x): its adjoint in g is the convolution of x by h, in x the input gradient.
        g, x, w = xs
        need_g, need_x, _ = F.needs_input_grad
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        return (
            F.apply(Conv2d(*geometry), x, h) if need_g else None,
            F.apply(Conv2dGradInput(*geometry), g, h, x) if need_x else None,
            None,
        )

    def cost(self, g: Spec, x: Spec, w: Spec) -> float:
        return 2.0 * numel(g) * math.prod(w.shape[1:]) / 16.0


# -- pooling -------------------------------------------------------------------
class Pool2d(Op, Window):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        self._init_window(kernel_size, kernel_size if stride is None else stride, padding, dilation)

    def infer(self, x: Spec) -> Spec:
        require_float(x)
        _check_image(x)
        oh, ow = self._out_hw(x.shape[2], x.shape[3], self.kernel)
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise ShapeError(f"kernel {self.kernel} does not fit input {format_shape(x.shape)}")
        return Spec((x.shape[0], x.shape[1], oh, ow), x.dtype)

    def cost(self, x: Spec) -> float:
        return float(numel(x) * self.kernel[0] * self.kernel[1] / (self.stride[0] * self.stride[1]))

    def _compiled(self, xp, x) -> bool:
        """Whether the compiled pass pools x (`kernels/pool.py`): numpy arrays of float32 or float64, stride
        1, a window smaller than the padded image (one window over it all is one reduction a plane)."""
        ph, pw = self.padding
        whole = tuple(self.kernel) == (x.shape[2] + 2 * ph, x.shape[3] + 2 * pw) and self.dilation == (1, 1)
        return xp is np and not whole and pool.usable(x.dtype, self.stride)


class MaxPool2d(Pool2d):
    name = "max_pool2d"

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind in "iu":  # integer images pool too (no gradient)
            return Spec(super().infer(Spec(x.shape, "float32")).shape, x.dtype)
        return super().infer(x)

    def forward(self, xp, x):
        if self._compiled(xp, x):
            return pool.pool2d(x, self.kernel, self.padding, self.dilation, take_max=True)
        fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
        # A pass per tap (nine for 3x3) beats numpy reducing small strided window axes by ~30x.
        return self._reduce_taps(xp, x, self.kernel, xp.maximum, fill=fill)

    def vjp(self, F, g, xs, y):
        return (F.apply(MaxPool2dGrad(self.kernel, self.stride, self.padding, self.dilation), g, xs[0]),)


class MaxPool2dGrad(Pool2d):
    """Routes each window's gradient to its first maximum, as PyTorch does."""

    name = "max_pool2d_grad"

    def infer(self, g: Spec, x: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, g, x):
        first = _first_max(self, xp, x)
        kw = self.kernel[1]
        return self._scatter(xp, x.shape, g.dtype, self.kernel, lambda i, j: g * (first == i * kw + j))

    def vjp(self, F, h, xs, y):
        # Linear in g (routing is piecewise constant in x): its adjoint picks h at each window's maximum.
        return (F.apply(MaxPool2dSelect(self.kernel, self.stride, self.padding, self.dilation), h, xs[1]), None)

    def cost(self, g: Spec, x: Spec) -> float:
        return 2.0 * numel(x) * self.kernel[0] * self.kernel[1]


class MaxPool2dSelect(Pool2d):
    """h (shaped like x) read at the first maximum of each pooling window of x: the adjoint of MaxPool2dGrad."""

    name = "max_pool2d_select"

    def infer(self, h: Spec, x: Spec) -> Spec:
        return Spec(super().infer(Spec(x.shape, h.dtype)).shape, h.dtype)

    def forward(self, xp, h, x):
        first = _first_max(self, xp, x)
        windows = self._windows(xp, h, self.kernel)
        n, c, oh, ow, kh, kw = windows.shape
        return xp.take_along_axis(windows.reshape(n, c, oh, ow, kh * kw), first[..., None], axis=4)[..., 0]

    def vjp(self, F, g, xs, y):
        return (F.apply(MaxPool2dGrad(self.kernel, self.stride, self.padding, self.dilation), g, xs[1]), None)

    def cost(self, h: Spec, x: Spec) -> float:
        return 2.0 * numel(x) * self.kernel[0] * self.kernel[1]


def _first_max(op: Pool2d, xp, x):
    """(N, C, OH, OW) index of each window's first maximum, counting taps row by row."""
    windows = op._windows(xp, x, op.kernel, fill=-np.inf)
    n, c, oh, ow, kh, kw = windows.shape
    return windows.reshape(n, c, oh, ow, kh * kw).argmax(axis=4)


class AvgPool2d(Pool2d):
    """Average over windows, zero padding counted (PyTorch's count_include_pad=True)."""

    name = "avg_pool2d"

    def forward(self, xp, x):
        if xp is np and tuple(self.kernel) == x.shape[2:] and self.padding == (0, 0) and self.dilation == (1, 1):
            from ..kernels import norm

            planes = x.reshape(x.shape[0], x.shape[1], -1)
            if norm.usable(planes):  # a global average pool: each plane's mean in SIMD lanes, C jobs
                return norm.mean_last(np.ascontiguousarray(planes)).reshape(x.shape[0], x.shape[1], 1, 1)
        if self._compiled(xp, x):
            total = pool.pool2d(x, self.kernel, self.padding, self.dilation, take_max=False)
        else:
            total = self._reduce_taps(xp, x, self.kernel, xp.add)
        return xp.divide(total, x.dtype.type(self.kernel[0] * self.kernel[1]), out=total)

    def vjp(self, F, g, xs, y):
        return (F.apply(AvgPool2dGrad(self.kernel, self.stride, self.padding, self.dilation), g, xs[0]),)


class AvgPool2dGrad(Pool2d):
    name = "avg_pool2d_grad"

    def infer(self, g: Spec, x: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, g, x):
        share = g / g.dtype.type(self.kernel[0] * self.kernel[1])
        return self._scatter(xp, x.shape, g.dtype, self.kernel, lambda i, j: share)

    def vjp(self, F, g, xs, y):
        return (F.apply(AvgPool2d(self.kernel, self.stride, self.padding, self.dilation), g), None)

    def cost(self, g: Spec, x: Spec) -> float:
        return float(numel(x) * self.kernel[0] * self.kernel[1])


# -- functions -----------------------------------------------------------------
def cross_entropy(logits, labels, name=None):
    """Mean cross-entropy of softmax(logits) against integer class labels."""
    return CrossEntropy()(logits, labels, name=name)


def mse(pred, target, name=None):
    """Mean squared error."""
    return MSE()(pred, target, name=name)


def conv2d(x, w, stride=1, padding=0, dilation=1, groups=1, name=None):
    """2-D convolution (cross-correlation) of NCHW x with OIHW w, without bias.

    With `groups` g, the C input channels and O output channels split into g groups
    and w is (O, C / g, kh, kw): groups=C is a depthwise convolution.
    """
    return Conv2d(stride, padding, dilation, groups)(x, w, name=name)


def conv_transpose2d(x, w, stride=1, padding=0, output_padding=0, dilation=1, groups=1, name=None):
    """Transposed 2-D convolution of NCHW x with w (C, O / groups, kh, kw), as torch's conv_transpose2d."""
    return ConvTranspose2d(stride, padding, dilation, groups, output_padding)(x, w, name=name)


def layer_norm(x, axes=(-1,), eps=1e-5, weight=None, bias=None, name=None):
    """(x - mean) / sqrt(var + eps) over `axes`, then * weight + bias (both optional), as torch's LayerNorm.

    Over trailing axes of known sizes it is one vertex (`ops.norm.LayerNorm`); otherwise it is
    built from elementwise vertices and reductions.
    """
    from .base import as_nodes
    from .elementwise import sqrt
    from .norm import LayerNorm
    from .reduce import mean

    (x,) = as_nodes((x,), "layer_norm")
    axes = sorted(a % x.ndim for a in ((axes,) if isinstance(axes, int) else axes))
    dims = len(axes)
    tail = tuple(x.shape[x.ndim - dims:])
    if axes == list(range(x.ndim - dims, x.ndim)) and None not in tail and x.dtype.kind == "f":
        w = weight if weight is not None else x.graph.const(np.ones(tail, x.dtype))
        b = bias if bias is not None else x.graph.const(np.zeros(tail, x.dtype))
        w, b = (v if hasattr(v, "graph") else x.graph.const(np.asarray(v, x.dtype)) for v in (w, b))
        if tuple(w.shape) == tail and tuple(b.shape) == tail:
            return LayerNorm(dims, eps)(x, w, b, name=name)
    mu = mean(x, axis=tuple(axes), keepdims=True)
    centered = x - mu
    var = mean(centered * centered, axis=tuple(axes), keepdims=True)
    out = centered / sqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    from .shape import Identity

    return Identity()(out, name=name) if name is not None else out


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, name=None):
    return MaxPool2d(kernel_size, stride, padding, dilation)(x, name=name)


def avg_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, name=None):
    return AvgPool2d(kernel_size, stride, padding, dilation)(x, name=name)
