"""Depthwise convolutions, forward and both gradients, as one pass over each image plane.

A depthwise convolution (groups = input channels) reads one channel per output
channel: the im2col product the other convolutions use spends its time copying
columns and calling BLAS on (1 x kh*kw) matrices, one group at a time. Here
each (image, output channel) plane is computed directly, tap by tap along
contiguous rows; numpy's twin
takes one pass per tap over the whole batch (the fallback).

The input arrives padded (the op pads it, one copy), so the loops check no
bounds. `mult` is the channel multiplier: output channel o reads input channel
o // mult. For the windows exported CNNs use (3x3, 5x5 and 7x7, stride 1 or
2) the forward kernel is generated for its geometry (`generated.py`): each
plane copied into a zero-padded buffer, then the taps written out along each
row, so that the loop vectorizes; other windows take a
loop over runtime sizes on a padded copy of the input.
"""

from __future__ import annotations

import functools

import numpy as np

from . import available
from .epilogue import ACTIVATIONS, NONE, bias_activation, passes_source
from .im2col import split, split_kernel

_compiled: dict[str, object] = {}
_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # numba has no float16


def _kernels():
    if not _compiled:
        import numba

        @numba.njit(cache=True, nogil=True)
        def forward(xp, w, out, sh, sw, dh, dw, mult):
            n_images, outs, oh, ow = out.shape
            kh, kw = w.shape[2], w.shape[3]
            for p in range(n_images * outs):
                n, o = p // outs, p % outs
                c = o // mult
                for r in range(oh):
                    for q in range(ow):
                        out[n, o, r, q] = 0
                for i in range(kh):
                    for j in range(kw):
                        wv = w[o, 0, i, j]
                        for r in range(oh):
                            y = r * sh + i * dh
                            for q in range(ow):
                                out[n, o, r, q] += wv * xp[n, c, y, j * dw + q * sw]

        @numba.njit(cache=True, nogil=True)
        def grad_weight(g, xp, gw, sh, sw, dh, dw, mult):
            n_images, outs, oh, ow = g.shape
            kh, kw = gw.shape[2], gw.shape[3]
            for o in range(outs):
                c = o // mult
                for i in range(kh):
                    for j in range(kw):
                        total = 0.0
                        for n in range(n_images):
                            for r in range(oh):
                                y = r * sh + i * dh
                                for q in range(ow):
                                    total += g[n, o, r, q] * xp[n, c, y, j * dw + q * sw]
                        gw[o, 0, i, j] = total

        @numba.njit(cache=True, nogil=True)
        def grad_input(g, w, gxp, sh, sw, dh, dw, mult):
            # each padded input plane gathers from the `mult` output planes that read it
            n_images, outs, oh, ow = g.shape
            channels = gxp.shape[1]
            kh, kw = w.shape[2], w.shape[3]
            for p in range(n_images * channels):
                n, c = p // channels, p % channels
                for y in range(gxp.shape[2]):
                    for x in range(gxp.shape[3]):
                        gxp[n, c, y, x] = 0
                for o in range(c * mult, (c + 1) * mult):
                    for i in range(kh):
                        for j in range(kw):
                            wv = w[o, 0, i, j]
                            for r in range(oh):
                                y = r * sh + i * dh
                                for q in range(ow):
                                    gxp[n, c, y, j * dw + q * sw] += wv * g[n, o, r, q]

        _compiled.update(forward=forward, grad_weight=grad_weight, grad_input=grad_input)
    return _compiled


# Geometries with a kernel of their own (the windows exported CNNs use); others take the general loop.
# How much longer a depthwise flop takes than a matrix product's (22 against about 90 GFLOP/s a core
# here): `im2col.split` sizes its threshold in a product's flops. Counted as such, a MobileNet block's
# depthwise convolution at batch 8 (5.3 MFLOP, 230 us on one core) ran whole; split, in 150 us.
SLOWER = 4.0
SPECIALIZED = {(k, k, s, s, 1, 1) for k in (3, 5, 7) for s in (1, 2)}


def _forward_source(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, code: int) -> str:
    """A depthwise forward for one geometry: each plane copied into one zeroed, padded buffer (the
    border stays zero from plane to plane), then the taps written out. At stride 1 the output is
    computed as rows of the buffer's width, each output t = r * cols + q reading its taps at t plus
    the tap's offset: one loop over the plane (a loop per row of 16 outputs cost more than its
    arithmetic: a MobileNet block's depthwise convolution at batch 8,
    (8, 144, 16, 16), took 161 us on two threads, 140 so), the columns past ow
    computed and dropped. Elsewhere, along each row. With `apply`, each plane's epilogue (the bias
    and the activation `code`, inlined from `activations.py` with the flags of the epilogue's own pass:
    its bits) as it is stored, where it is in cache."""
    loads = _weight_loads(kh, kw)
    if (sh, sw) == (1, 1):
        terms = " + ".join(f"w{i}_{j} * B[np.uint64(t + {i * dh} * cols + {j * dw})]"
                           for i in range(kh) for j in range(kw))
        body = f"""        for t in range(oh * cols):
            T[np.uint64(t)] = {terms}
        if apply:
            b = bias[o]
            for r in range(oh):
                for q in range(ow):
                    Y[np.uint64(p * plane + r * ow + q)] = activate(T[np.uint64(r * cols + q)] + b, p0, p1)
        else:
            for r in range(oh):
                for q in range(ow):
                    Y[np.uint64(p * plane + r * ow + q)] = T[np.uint64(r * cols + q)]"""
    else:
        rows = "\n".join(f"            R{i} = buf[r * {sh} + {i * dh}]" for i in range(kh))
        terms = " + ".join(f"w{i}_{j} * R{i}[q * {sw} + {j * dw}]" for i in range(kh) for j in range(kw))
        body = f"""        for r in range(oh):
{rows}
            D = out[n, o, r]
            for q in range(ow):
                D[q] = {terms}
            if apply:
                for q in range(ow):
                    D[q] = activate(D[q] + bias[o], p0, p1)"""
    return passes_source(code) + f"""import numpy as np


@numba.njit(cache=True, nogil=True)
def forward(x, w, out, mult, ph, pw, bias, p0, p1, apply):
    n_images, outs, oh, ow = out.shape
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    cols, plane = wd + 2 * pw, oh * ow
    # one row more than the padding needs: the last output row's dropped columns read past it
    buf = np.zeros((h + 2 * ph + 1, cols), dtype=x.dtype)
    B, X, Y = buf.reshape(-1), x.reshape(-1), out.reshape(-1)
    T = np.empty(oh * cols, dtype=x.dtype)
    for p in range(n_images * outs):
        n = p // outs
        o = p - n * outs
        for y in range(h):  # (flat: a slice assignment a plane cost about 0.1 us)
            source, target = ((n * channels + o // mult) * h + y) * wd, (y + ph) * cols + pw
            for col in range(wd):
                B[np.uint64(target + col)] = X[np.uint64(source + col)]
{loads}
{body}
"""


def _weight_loads(kh: int, kw: int) -> str:
    return "\n".join(f"        w{i}_{j} = w[o, 0, {i}, {j}]" for i in range(kh) for j in range(kw))


def _same_source(kh: int, kw: int, code: int) -> str:
    """A depthwise forward at stride 1 whose output is as wide as its input (kw odd, kw // 2 columns
    of padding a side: the exported CNNs' "same" padding). The plane is copied whole, in one loop
    that vectorizes, below `ph` zero rows into a buffer of the input's width; each output t = r * wd + q
    reads its taps at t plus the tap's offset, a tap past the row's edge replaced by zero (a select
    on the output's column, so the sum has the padded kernel's terms in the same order), and is
    stored in place, in one loop over the plane. The copy into a padded buffer of wider rows and the
    copy out of it, their loops 16 long on a 16-wide plane, had taken half the time: the vectorized
    loops need more iterations than a row has. The taps' multiply-adds are fused (`contract`); the
    epilogue runs after each plane with its own pass's flags (`finish`), so its bits are the pass's."""
    pw = kw // 2
    name, fastmath = ACTIVATIONS[code]

    def tap(i: int, j: int) -> str:
        value, d = f"B[np.uint64(t + {i} * wd + {j})]", j - pw
        if d:
            edge = f"q >= {-d}" if d < 0 else f"q < wd - {d}"
            value = f"({value} if {edge} else zero)"
        return f"w{i}_{j} * {value}"

    terms = " + ".join(tap(i, j) for i in range(kh) for j in range(kw))
    return passes_source(code) + f"""import numpy as np


@numba.njit(cache=True, nogil=True, fastmath={fastmath!r}, error_model="numpy")
def finish(Y, first, last, b, p0, p1):  # the epilogue on a plane, with its pass's flags
    for t in range(first, last):
        Y[np.uint64(t)] = activate(Y[np.uint64(t)] + b, p0, p1)


@numba.njit(cache=True, nogil=True, fastmath={{"contract"}})
def forward(x, w, out, mult, ph, pw, bias, p0, p1, apply):
    n_images, outs, oh, ow = out.shape
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    plane = oh * ow
    # `pw` slots before and after: a select's load at the plane's first and last output lies there
    buf = np.zeros((h + 2 * ph) * wd + 2 * pw, dtype=x.dtype)
    B, X, Y = buf, x.reshape(-1), out.reshape(-1)
    columns = np.empty(plane, np.int64)  # each output's column
    for t in range(plane):
        columns[t] = t % wd
    zero = buf[0]  # (a zero of x's dtype)
    first = pw + ph * wd
    for p in range(n_images * outs):
        n = p // outs
        o = p - n * outs
        source = (n * channels + o // mult) * h * wd
        for k in range(h * wd):
            B[np.uint64(first + k)] = X[np.uint64(source + k)]
{_weight_loads(kh, kw)}
        for t in range(plane):
            q = columns[t]
            Y[np.uint64(p * plane + t)] = {terms}
        if apply:
            finish(Y, p * plane, (p + 1) * plane, bias[o], p0, p1)
"""


def _is_same(kernel, stride, dilation, padding) -> bool:
    """Whether `_same_source`'s kernel computes this geometry."""
    kh, kw = kernel
    pw = padding[1]
    return tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and kw % 2 == 1 and pw == kw // 2 and \
        (kh, kw, 1, 1, 1, 1) in SPECIALIZED


@functools.cache
def _forward_kernel(kernel, stride, dilation, code=NONE, same=False):
    """The forward kernel for this geometry (`same`: its "same" padding, `_is_same`): generated for
    it, or None (the general loop) for large windows. (Kept: its source written out and hashed
    again cost 60 us a call, a quarter of a MobileNet block's depthwise convolution at batch 8.)"""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    if (kh, kw, sh, sw, dh, dw) not in SPECIALIZED:
        return None
    from .generated import module

    if same:
        return module(f"depthwise_{kh}x{kw}_same_{ACTIVATIONS[code][0]}", _same_source(kh, kw, code)).forward
    return module(f"depthwise_{kh}x{kw}_s{sh}x{sw}_d{dh}x{dw}_{ACTIVATIONS[code][0]}",
                  _forward_source(kh, kw, sh, sw, dh, dw, code)).forward


def _out_hw(padded_shape, kernel, stride, dilation):
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    h, w = padded_shape[2:]
    return (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1


def depthwise(x: np.ndarray, w: np.ndarray, stride, padding, dilation, pad=None, out=None, then=None,
              epilogue=None) -> np.ndarray:
    """The depthwise convolution of x (N, C, H, W) by w (C * mult, 1, kh, kw), zero-padded by `padding`.

    Args:
        pad: pads x as the caller's other kernels do (for the numpy fallback and large windows).
        out: the output array to fill, or None.
        then: called with out[first:last] as soon as those images are done (an epilogue, in cache).
        epilogue: (bias or None, activation code, p0, p1): `epilogue.bias_activation` along the
            channels, in the generated kernels as each plane is stored (but GELU's, whose pass has
            flags of its own), after the convolution elsewhere.
    """
    mult = w.shape[0] // x.shape[1]
    (ph, pw) = padding
    padded_shape = (*x.shape[:2], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
    oh, ow = _out_hw(padded_shape, w.shape[2:], stride, dilation)
    dtype = np.result_type(x.dtype, w.dtype)
    if out is None:
        out = np.empty((x.shape[0], w.shape[0], oh, ow), dtype)
    compiled = available() and dtype in _COMPILED_DTYPES
    if epilogue is not None and (ACTIVATIONS[epilogue[1]][1] or not compiled):  # (GELU's pass: flags of its own)
        then, epilogue = _pass_after(epilogue), None
    code = NONE if epilogue is None else epilogue[1]
    geometry = tuple(w.shape[2:]), tuple(stride), tuple(dilation)
    kernel = _forward_kernel(*geometry, code, _is_same(*geometry, padding)) if compiled else None
    if kernel is not None:
        x, w = np.ascontiguousarray(x, dtype), np.ascontiguousarray(w, dtype)
        t = dtype.type
        if epilogue is None:
            bias, p0, p1 = np.zeros(0, dtype), t(0), t(0)
        else:
            bias, p0, p1 = (np.zeros(w.shape[0], dtype) if epilogue[0] is None else
                            np.ascontiguousarray(epilogue[0], dtype).reshape(-1)), t(epilogue[2]), t(epilogue[3])
        apply, flops = epilogue is not None, SLOWER * 2.0 * out.size * w.shape[2] * w.shape[3]
        if then is None:
            split_kernel(x.shape[0], kernel, lambda first, last: (x[first:last], w, out[first:last], mult, ph, pw,
                                                                  bias, p0, p1, apply), flops)
        else:
            split(x.shape[0], lambda first, last: kernel(x[first:last], w, out[first:last], mult, ph, pw, bias, p0,
                                                         p1, apply), flops, _images(then, out),
                  out.nbytes // out.shape[0])
        return out
    if epilogue is not None:  # a window without a generated kernel
        then = _pass_after(epilogue)
    xp = pad(x) if (ph or pw) else x
    if compiled:
        xp, w = np.ascontiguousarray(xp, dtype), np.ascontiguousarray(w, dtype)
        forward = _kernels()["forward"]
        split(x.shape[0], lambda first, last: forward(xp[first:last], w, out[first:last], *stride, *dilation, mult),
              SLOWER * 2.0 * out.size * w.shape[2] * w.shape[3], _images(then, out), out.nbytes // out.shape[0])
        return out
    (sh, sw), (dh, dw) = stride, dilation
    source = np.repeat(xp, mult, axis=1) if mult > 1 else xp
    out[...] = 0
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            tap = source[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            out += tap * w[None, :, 0, i, j, None, None]
    if then is not None:
        then(out)
    return out


def _pass_after(epilogue):
    """The epilogue (bias, code, p0, p1) as a pass over each run of images once they are done."""
    bias, code, p0, p1 = epilogue
    return functools.partial(bias_activation, bias=bias, axis=1, code=code, p0=p0, p1=p1)


def _images(then, out):
    """then(out[first:last]) as split's `then`, or None."""
    return None if then is None else lambda first, last: then(out[first:last])


def depthwise_grad_weight(g: np.ndarray, xp: np.ndarray, w_shape, stride, dilation) -> np.ndarray:
    """d loss / d w of a depthwise convolution, from the output gradient and the padded input."""
    mult = w_shape[0] // xp.shape[1]
    dtype = np.result_type(g.dtype, xp.dtype)
    gw = np.empty(w_shape, dtype)
    if available() and dtype in _COMPILED_DTYPES:
        _kernels()["grad_weight"](np.ascontiguousarray(g, dtype), np.ascontiguousarray(xp, dtype), gw, *stride,
                                  *dilation, mult)
        return gw
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = g.shape[2:]
    source = np.repeat(xp, mult, axis=1) if mult > 1 else xp
    for i in range(w_shape[2]):
        for j in range(w_shape[3]):
            tap = source[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            gw[:, 0, i, j] = np.einsum("nchw,nchw->c", g, tap)
    return gw


def depthwise_grad_input(g: np.ndarray, w: np.ndarray, padded_shape, stride, dilation) -> np.ndarray:
    """d loss / d (padded input) of a depthwise convolution (the caller crops the padding)."""
    mult = w.shape[0] // padded_shape[1]
    dtype = np.result_type(g.dtype, w.dtype)
    gxp = np.empty(padded_shape, dtype)
    if available() and dtype in _COMPILED_DTYPES:
        _kernels()["grad_input"](np.ascontiguousarray(g, dtype), np.ascontiguousarray(w, dtype), gxp, *stride,
                                 *dilation, mult)
        return gxp
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = g.shape[2:]
    n, c = padded_shape[:2]
    gxp[...] = 0
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            part = g * w[None, :, 0, i, j, None, None]
            if mult > 1:
                part = part.reshape(n, c, mult, oh, ow).sum(axis=2)
            gxp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw] += part
    return gxp
