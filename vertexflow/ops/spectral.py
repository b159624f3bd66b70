"""The discrete Fourier transform along one axis, on complex values stored as ONNX stores them.

A complex tensor is a real one with a last axis of 2 (real, imaginary); a real signal has a last
axis of 1. `Fourier` computes with the array module's FFT (numpy's, or cupy's on a GPU): a
transform of `length` points (the signal zero-padded or truncated to it), forward, inverse
(scaled by 1/length), one-sided (the first length // 2 + 1 bins) or the inverse of a one-sided
spectrum (a real signal, numpy's irfft). The transform is linear, so its derivative is its
adjoint, `FourierAdjoint`, another FFT; the adjoint's own derivative is the transform again.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, format_shape
from .base import Op


def _complex(xp, x):
    return x[..., 0] if x.shape[-1] == 1 else x[..., 0] + 1j * x[..., 1]


def _packed(xp, z, parts: int, dtype):
    if parts == 1:
        return xp.real(z)[..., None].astype(dtype, copy=False)
    return xp.stack([xp.real(z), xp.imag(z)], axis=-1).astype(dtype, copy=False)


def _fit(xp, z, axis: int, size: int):
    """z zero-padded or truncated to `size` along `axis`."""
    n = z.shape[axis]
    if n == size:
        return z
    if n > size:
        return xp.take(z, xp.arange(size), axis=axis)
    pads = [(0, 0)] * z.ndim
    pads[axis] = (0, size - n)
    return xp.pad(z, pads)


class Fourier(Op):
    """The DFT of `length` points along `axis` of a (..., parts) tensor, parts 1 (real) or 2 (complex)."""

    name = "fourier"

    def __init__(self, axis: int, length: int, inverse: bool = False, onesided: bool = False):
        self.axis, self.length, self.inverse, self.onesided = int(axis), int(length), bool(inverse), bool(onesided)
        if self.length < 1:
            raise ShapeError(f"fourier: a transform of {self.length} points")

    @property
    def real_output(self) -> bool:
        return self.inverse and self.onesided  # numpy's irfft

    def out_size(self) -> int:
        return self.length // 2 + 1 if self.onesided and not self.inverse else self.length

    def infer(self, x: Spec) -> Spec:
        if x.dtype.kind != "f" or x.ndim < 2 or x.shape[-1] not in (1, 2, None) or not 0 <= self.axis < x.ndim - 1:
            raise ShapeError(f"fourier along axis {self.axis} needs floats of shape (..., 1 or 2) with that axis "
                             f"before the last, got {format_shape(x.shape)} {x.dtype}")
        shape = list(x.shape)
        shape[self.axis] = self.out_size()
        shape[-1] = 1 if self.real_output else 2
        return Spec(tuple(shape), x.dtype)

    def forward(self, xp, x):
        z = _complex(xp, x)
        if self.real_output:
            out = xp.fft.irfft(_fit(xp, z, self.axis, self.length // 2 + 1), n=self.length, axis=self.axis)
            return _packed(xp, out, 1, x.dtype)
        if self.inverse:
            out = xp.fft.ifft(z, n=self.length, axis=self.axis)
        else:
            out = xp.fft.fft(z, n=self.length, axis=self.axis)
            if self.onesided:
                out = xp.take(out, xp.arange(self.out_size()), axis=self.axis)
        return _packed(xp, out, 2, x.dtype)

    def vjp(self, F, g, xs, y):
        (x,) = xs
        shape = tuple(F.shape(x)) if hasattr(F, "shape") else tuple(x.shape)
        return (F.apply(FourierAdjoint(self, shape[self.axis], shape[-1]), g),)

    def cost(self, x: Spec) -> float:
        n = max(self.length, 2)
        rows = float(np.prod([d or 1 for d in x.shape[:-1]])) / max(x.shape[self.axis] or 1, 1)
        return 5.0 * rows * n * np.log2(n)


class FourierAdjoint(Op):
    """The adjoint of a `Fourier` transform (its derivative): from the transform's output space back to
    its input's, `n` points along the axis and `parts` (1 or 2) in the last."""

    name = "fourier_adjoint"

    def __init__(self, transform: Fourier, n: int, parts: int):
        self.transform, self.n, self.parts = transform, int(n), int(parts)

    def infer(self, g: Spec) -> Spec:
        shape = list(g.shape)
        shape[self.transform.axis] = self.n
        shape[-1] = self.parts
        return Spec(tuple(shape), g.dtype)

    def forward(self, xp, g):
        t, axis, length = self.transform, self.transform.axis, self.transform.length
        if t.real_output:  # y_t = (1/L) sum_k w_k Re(Z_k e^{+i...}): the adjoint is (w_k / L) rfft(g)_k
            bins = length // 2 + 1
            weight = np.full(bins, 2.0)
            weight[0] = 1.0
            if length % 2 == 0:
                weight[-1] = 1.0
            shape = [1] * g.ndim
            shape[axis] = bins
            z = xp.fft.rfft(g[..., 0], n=length, axis=axis) * xp.asarray((weight / length).reshape(shape[:-1]))
        else:
            gz = _complex(xp, g)
            if t.inverse:  # (1/L) conj(F): the adjoint is (1/L) F
                z = xp.fft.fft(gz, n=length, axis=axis) / length
            else:  # F (the one-sided bins of it): the adjoint is conj(F)^T = L ifft of the zero-padded bins
                z = xp.fft.ifft(_fit(xp, gz, axis, length), n=length, axis=axis) * length
        z = _fit(xp, z, axis, self.n)  # the input's padding or truncation, undone
        return _packed(xp, z, self.parts, g.dtype)

    def vjp(self, F, gg, xs, y):
        return (F.apply(self.transform, gg),)  # the adjoint of the adjoint

    def cost(self, g: Spec) -> float:
        return self.transform.cost(Spec(self.infer(g).shape, g.dtype))


def fourier(x, axis: int, length: int, inverse: bool = False, onesided: bool = False, name=None):
    """The DFT of x (..., 1 or 2: real, or real and imaginary parts) along `axis`, as ONNX's DFT."""
    return Fourier(axis, length, inverse, onesided)(x, name=name)
