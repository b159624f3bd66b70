"""Sampling an image at given points: `grid_sample` (nearest, linear or cubic interpolation over 2 or
3 spatial axes, with zeros, border or reflection padding, as torch's `grid_sample` and ONNX's
GridSample), and `affine_grid`, the points of an affine transform.

Both are composed of ops with derivatives: the taps are gathers (whose derivative scatters into the
image) and the weights are polynomials in the fractional coordinates (whose derivative reaches the
grid), so a spatial transformer trains end to end.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import ShapeError
from .elementwise import astype, clip, equal, floor, greater, less, logical_and, logical_or, remainder, round, where
from .indexing import GatherND
from .shape import getitem, reshape, transpose


def _denormalize(g, size: int, align_corners: bool):
    """[-1, 1] -> pixel coordinates along an axis of `size` pixels."""
    t = g.dtype.type
    if align_corners:
        return (g + t(1)) * t((size - 1) / 2)
    return ((g + t(1)) * t(size) - t(1)) / t(2)


def _reflect(x, low: float, high: float):
    """x folded back into [low, high] by its near edge, as many times as it takes."""
    t = x.dtype.type
    span = t(high - low)
    below, above = t(low) - x, x - t(high)
    out = x
    for distance, near, far, side in ((below, low, high, less(x, t(low))), (above, high, low, greater(x, t(high)))):
        times = floor(distance / span)
        rest = distance - times * span
        even = equal(remainder(times, t(2)), t(0))
        inward = t(1) if near == low else t(-1)
        folded = where(even, t(near) + rest * inward, t(far) - rest * inward)
        out = where(side, folded, out)
    return out


def _cubic_weights(frac):
    """Keys' cubic convolution weights (a = -0.75) of the four taps around a point."""
    t = frac.dtype.type
    a = -0.75

    def near(d):
        return ((t(a + 2) * d - t(a + 3)) * d) * d + t(1)

    def far(d):
        return ((t(a) * d - t(5 * a)) * d + t(8 * a)) * d - t(4 * a)

    return [far(frac + t(1)), near(frac), near(t(1) - frac), far(t(2) - frac)]


def grid_sample(x, grid, mode: str = "linear", padding_mode: str = "zeros", align_corners: bool = False, name=None):
    """x (N, C, *spatial) sampled at grid (N, *out, D): each point's D coordinates, in [-1, 1] across
    the image, in reversed axis order (x then y then z). Returns (N, C, *out).

    Values follow ONNX's GridSample, which are torch's except in one case: cubic interpolation with
    border or reflection padding, where ONNX first moves a point that lies outside the image inside
    it and then pads its taps, and torch only pads the taps.
    """
    if mode not in ("nearest", "linear", "cubic"):
        raise ShapeError(f"grid_sample: mode={mode!r}; expected nearest, linear or cubic")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ShapeError(f"grid_sample: padding_mode={padding_mode!r}; expected zeros, border or reflection")
    dims = x.ndim - 2
    if dims < 1 or grid.ndim != dims + 2 or grid.shape[-1] not in (dims, None):
        raise ShapeError(f"grid_sample: a grid {grid.shape} does not address the {dims} spatial axes of {x.shape}")
    spatial = x.shape[2:]
    if None in spatial or x.shape[1] is None or None in grid.shape[1:-1]:
        raise ShapeError("grid_sample needs the image's channels and sizes and the grid's sizes known "
                         "(the batch may vary)")
    channels = x.shape[1]
    out_shape = grid.shape[1:-1]
    points = int(np.prod(out_shape))
    t = x.dtype.type
    if grid.dtype != x.dtype:
        grid = astype(grid, x.dtype)
    coords, taps = [], []
    for axis, size in enumerate(spatial):
        g = getitem(grid, (Ellipsis, dims - 1 - axis))  # (N, *out)
        c = _denormalize(g, size, align_corners)
        if mode == "nearest":
            c = round(c)
        low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
        outside = logical_or(less(c, t(low)), greater(c, t(high)))
        if padding_mode == "border":
            c = where(outside, clip(c, 0.0, size - 1.0), c)
        elif padding_mode == "reflection":
            c = where(outside, _reflect(c, low, high), c)
        coords.append(c)
        if mode == "nearest":
            starts, weights = [c], [None]
        else:
            base = floor(c)
            frac = c - base
            if mode == "linear":
                starts, weights = [base, base + t(1)], [t(1) - frac, frac]
            else:
                starts, weights = [base + t(k) for k in (-1, 0, 1, 2)], _cubic_weights(frac)
        taps.append([_fetch(s, w, size, padding_mode, low, high) for s, w in zip(starts, weights)])
    pixels = transpose(reshape(x, (-1, channels, int(np.prod(spatial)))), (0, 2, 1))  # (N, pixels, C)
    strides = [int(np.prod(spatial[axis + 1:])) for axis in range(dims)]
    total = None
    for combination in itertools.product(*taps):
        position, weight = None, None
        for (index, w), stride in zip(combination, strides):
            term = index * np.int64(stride) if stride != 1 else index
            position = term if position is None else position + term
            if w is not None:
                weight = w if weight is None else weight * w
        value = GatherND(batch_dims=1)(pixels, reshape(position, (-1, points, 1)))  # (N, points, C)
        if weight is not None:
            value = value * reshape(weight, (-1, points, 1))
        total = value if total is None else total + value
    return reshape(transpose(total, (0, 2, 1)), (-1, channels) + tuple(out_shape), name=name)


def _fetch(start, weight, size: int, padding_mode: str, low: float, high: float):
    """(int64 index, weight) of a tap at float position `start`, padded as asked: an index outside the
    image reads zero (its weight made zero), the nearest edge pixel, or its reflection."""
    t = start.dtype.type
    if padding_mode == "border":
        return astype(clip(start, 0.0, size - 1.0), "int64"), weight
    if padding_mode == "reflection":
        inside = _reflect(start, low, high)
        return astype(clip(inside, 0.0, size - 1.0), "int64"), weight  # truncated toward zero, as C's cast
    valid = logical_and(greater(start, t(-1)), less(start, t(size)))
    weight = where(valid, weight if weight is not None else t(1), t(0))
    return astype(clip(start, 0.0, size - 1.0), "int64"), weight


def affine_grid(theta, size, align_corners: bool = False, name=None):
    """The sampling grid of affine transforms theta (N, D, D + 1) over an output of `size`
    (N, C, *spatial): each point's transformed coordinates, last axis in reversed axis order."""
    size = [int(s) for s in size]
    n, spatial = size[0], size[2:]
    dims = len(spatial)
    if theta.ndim != 3 or theta.shape[1:] not in ((dims, dims + 1),):
        raise ShapeError(f"affine_grid: theta {theta.shape} is not (N, {dims}, {dims + 1}) for {dims} spatial axes")
    axes = []
    for length in spatial:
        if align_corners:
            line = np.linspace(-1.0, 1.0, length) if length > 1 else np.zeros(1)
        else:
            line = (np.arange(length) * 2.0 + 1.0) / length - 1.0
        axes.append(line)
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per axis, (*spatial)
    base = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(int(np.prod(spatial)))], axis=1)
    base = base.astype(theta.dtype)  # (points, D + 1): x, y[, z], 1
    from .linalg import matmul

    points = matmul(base, transpose(theta, (0, 2, 1)))  # (N, points, D)
    return reshape(points, (n, *spatial, dims), name=name)
