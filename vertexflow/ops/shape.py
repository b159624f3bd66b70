"""Movement ops: reshape, transpose, broadcast, concat, indexing, and the `*_like` ops.

The `*_like` ops take a second input only for its shape at run time. They
let a gradient vertex built by `vf.grad` match a shape that is unknown until
the feed arrives (a None batch dimension).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, format_shape
from .base import Op, broadcast_shapes, normalize_axes, numel, sum_to_shape


class Reshape(Op):
    name = "reshape"
    writes_out = True  # where it must copy (an input numpy cannot view in the new shape): into out
    views = True

    def __init__(self, shape):
        shape = tuple(int(d) for d in shape)
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise ShapeError(f"reshape: bad target shape {shape}; use at most one -1")
        self.shape = shape

    def infer(self, x: Spec) -> Spec:
        target = self.shape
        fixed = math.prod(d for d in target if d != -1)
        if x.static:
            total = math.prod(x.shape)
            if -1 in target:
                if fixed == 0 or total % fixed:
                    raise ShapeError(f"cannot reshape {format_shape(x.shape)} into {target}")
                target = tuple(total // fixed if d == -1 else d for d in target)
            elif total != fixed:
                raise ShapeError(f"cannot reshape {format_shape(x.shape)} ({total} elements) into {target}")
            return Spec(target, x.dtype)
        # x has a size known only at run time: the -1 slot takes it, checked then.
        if -1 in target:
            return Spec(tuple(None if d == -1 else d for d in target), x.dtype)
        known = math.prod(d for d in x.shape if d is not None)
        if fixed % known:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} into {target}")
        return Spec(target, x.dtype)

    def forward(self, xp, x, out=None):
        if out is None or x.flags.c_contiguous or not out.flags.c_contiguous or xp.__name__ != "numpy":
            return xp.reshape(x, self.shape)
        try:
            return xp.reshape(x, self.shape, copy=False)  # a view wherever the strides allow one
        except TypeError:  # numpy before 2.1: it decides for itself
            return xp.reshape(x, self.shape)
        except ValueError:  # a copy is needed: into the buffer given (a fresh one was page-faulted
            pass  # anew each step: an attention's reshapes took 2.8x longer in one process than another)
        xp.copyto(out.reshape(x.shape), x)
        return out

    def vjp(self, F, g, xs, y):
        return (F.reshape_like(g, xs[0]),)

    def cost(self, x: Spec) -> float:
        return 1.0


class ReshapeLike(Op):
    """Reshape x to the run-time shape of `like`."""

    name = "reshape_like"

    def infer(self, x: Spec, like: Spec) -> Spec:
        return Spec(like.shape, x.dtype)

    def forward(self, xp, x, like):
        return xp.reshape(x, like.shape)

    def vjp(self, F, g, xs, y):
        return (F.reshape_like(g, xs[0]), None)

    def cost(self, *specs: Spec) -> float:
        return 1.0


class Transpose(Op):
    name = "transpose"

    def __init__(self, axes=None):
        self.axes = None if axes is None else tuple(int(a) for a in axes)

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(reversed(range(ndim))) if self.axes is None else self.axes

    def infer(self, x: Spec) -> Spec:
        axes = self._axes(x.ndim)
        if sorted(a % x.ndim if x.ndim else a for a in axes) != list(range(x.ndim)):
            raise ShapeError(f"axes {axes} are not a permutation of {x.ndim} dimensions")
        return Spec(tuple(x.shape[a] for a in axes), x.dtype)

    def forward(self, xp, x):
        return xp.transpose(x, self.axes)

    def vjp(self, F, g, xs, y):
        axes = [a % F.ndim(g) for a in self._axes(F.ndim(g))]
        return (F.transpose(g, tuple(int(i) for i in np.argsort(axes))),)

    def cost(self, x: Spec) -> float:
        return 1.0


class ExpandDims(Op):
    name = "expand_dims"

    def __init__(self, axes):
        self.axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)

    def infer(self, x: Spec) -> Spec:
        ndim = x.ndim + len(self.axes)
        axes = normalize_axes(self.axes, ndim)
        rest = iter(x.shape)
        return Spec(tuple(1 if i in axes else next(rest) for i in range(ndim)), x.dtype)

    def forward(self, xp, x):
        return xp.expand_dims(x, self.axes)

    def vjp(self, F, g, xs, y):
        return (F.squeeze(g, self.axes),)

    def cost(self, x: Spec) -> float:
        return 1.0


class Squeeze(Op):
    name = "squeeze"

    def __init__(self, axes):
        self.axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)

    def infer(self, x: Spec) -> Spec:
        axes = normalize_axes(self.axes, x.ndim)
        for a in axes:
            if x.shape[a] not in (1, None):
                raise ShapeError(f"cannot squeeze axis {a} of size {x.shape[a]} in {format_shape(x.shape)}")
        return Spec(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)

    def forward(self, xp, x):
        return xp.squeeze(x, self.axes)

    def vjp(self, F, g, xs, y):
        return (F.expand_dims(g, self.axes),)

    def cost(self, x: Spec) -> float:
        return 1.0


class BroadcastTo(Op):
    name = "broadcast_to"

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)

    def infer(self, x: Spec) -> Spec:
        if len(self.shape) < x.ndim or broadcast_shapes(x.shape, self.shape) != self.shape:
            raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(self.shape)}")
        return Spec(self.shape, x.dtype)

    def forward(self, xp, x):
        return xp.broadcast_to(x, self.shape)

    def vjp(self, F, g, xs, y):
        return (F.sum_to(g, xs[0]),)


class BroadcastLike(Op):
    """Broadcast x to the run-time shape of `like`."""

    name = "broadcast_like"

    def infer(self, x: Spec, like: Spec) -> Spec:
        try:
            shape = broadcast_shapes(x.shape, like.shape)
        except ShapeError:
            shape = None
        if shape is None or len(shape) != like.ndim:
            raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(like.shape)}")
        return Spec(like.shape, x.dtype)

    def forward(self, xp, x, like):
        return xp.broadcast_to(x, like.shape)

    def vjp(self, F, g, xs, y):
        return (F.sum_to(g, xs[0]), None)

    def cost(self, x: Spec, like: Spec) -> float:
        return float(numel(like))


class SumToLike(Op):
    """Sum x over broadcast dimensions down to the run-time shape of `like`."""

    name = "sum_to"

    def infer(self, x: Spec, like: Spec) -> Spec:
        if like.ndim > x.ndim:
            raise ShapeError(f"cannot sum {format_shape(x.shape)} to {format_shape(like.shape)}")
        return Spec(like.shape, x.dtype)

    def forward(self, xp, x, like):
        return sum_to_shape(xp, x, like.shape)

    def vjp(self, F, g, xs, y):
        return (F.broadcast_like(g, xs[0]), None)

    def cost(self, x: Spec, like: Spec) -> float:
        return float(numel(x))


class Concat(Op):
    name = "concat"
    writes_out = True

    def __init__(self, axis: int = 0):
        self.axis = int(axis)

    def infer(self, *xs: Spec) -> Spec:
        if not xs:
            raise ShapeError("needs at least one input")
        ndim = xs[0].ndim
        if any(x.ndim != ndim for x in xs):
            raise ShapeError("inputs differ in rank: " + ", ".join(format_shape(x.shape) for x in xs))
        (axis,) = normalize_axes(self.axis, ndim)
        shape = []
        for i in range(ndim):
            dims = [x.shape[i] for x in xs]
            if i == axis:
                shape.append(None if None in dims else sum(dims))
                continue
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise ShapeError(
                    f"sizes differ off the concat axis {axis}: " + ", ".join(format_shape(x.shape) for x in xs)
                )
            shape.append(known.pop() if known else None)
        return Spec(tuple(shape), np.result_type(*(x.dtype for x in xs)))

    def forward(self, xp, *xs, out=None):
        return xp.concatenate(xs, axis=self.axis, out=out)

    def vjp(self, F, g, xs, y):
        return tuple(
            F.apply(Segment(self.axis, i), g, *xs) if need else None
            for i, need in enumerate(F.needs_input_grad)
        )


class Segment(Op):
    """The part of a concatenation's gradient that belongs to input `index`."""

    name = "concat_segment"

    def __init__(self, axis: int, index: int):
        self.axis = axis
        self.index = index

    def infer(self, g: Spec, *xs: Spec) -> Spec:
        return Spec(xs[self.index].shape, g.dtype)

    def forward(self, xp, g, *xs):
        axis = self.axis % g.ndim
        start = sum(x.shape[axis] for x in xs[: self.index])
        stop = start + xs[self.index].shape[axis]
        return g[(slice(None),) * axis + (slice(start, stop),)]

    def vjp(self, F, h, xs, y):
        # Linear in g: its adjoint puts h back in its place among zeros, a concatenation.
        parts = xs[1:]
        dtype = F.dtype(h)
        pieces = []
        for i, part in enumerate(parts):
            if i == self.index:
                pieces.append(h)
            else:
                zeros = F.zeros_like(part)
                pieces.append(zeros if F.dtype(part) == dtype else F.cast(zeros, dtype))
        need_g = F.needs_input_grad[0]
        return (F.apply(Concat(self.axis), *pieces) if need_g else None, *([None] * len(parts)))


def _normalize_index(index: Any) -> tuple:
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    arrays = 0
    for item in index:
        if isinstance(item, (list, np.ndarray)):
            array = np.asarray(item)
            if array.dtype.kind == "b":
                raise ShapeError("boolean mask indexing gives a data-dependent shape; use vf.where instead")
            if array.dtype.kind not in "iu":
                raise ShapeError(f"index arrays must hold integers, got {array.dtype}")
            array = array.astype(np.int64)
            array.flags.writeable = False
            out.append(array)
            arrays += 1
        elif isinstance(item, (bool, np.bool_)):
            raise ShapeError("boolean indices are not supported")
        elif isinstance(item, (int, np.integer)):
            out.append(int(item))
        elif item is None or item is Ellipsis or isinstance(item, slice):
            out.append(item)
        else:
            raise ShapeError(f"cannot index with a {type(item).__name__}")
    if arrays > 1:
        raise ShapeError("at most one integer-array index is supported")
    if sum(1 for i in out if i is Ellipsis) > 1:
        raise ShapeError("an index can only have a single ellipsis")
    return tuple(out)


class Getitem(Op):
    """Basic indexing (ints, slices, None, ...) plus at most one integer-array index."""

    name = "getitem"

    def __init__(self, index):
        self.index = _normalize_index(index)

    def infer(self, x: Spec) -> Spec:
        """numpy's indexing rule: with an array index, integers index alongside it (advanced
        indexing), and the advanced dimensions replace those indices in place when they are
        adjacent, else they move to the front."""
        consumed = sum(1 for i in self.index if i is not None and i is not Ellipsis)
        if consumed > x.ndim:
            raise ShapeError(f"too many indices for {format_shape(x.shape)}")
        items: list = []
        for i in self.index:
            if i is Ellipsis:
                items.extend([slice(None)] * (x.ndim - consumed))
            else:
                items.append(i)
        items.extend([slice(None)] * (x.ndim - sum(1 for i in items if i is not None)))
        arrays = [i for i in items if isinstance(i, np.ndarray)]
        advanced = [k for k, i in enumerate(items) if isinstance(i, np.ndarray) or (arrays and isinstance(i, int))]
        broadcast = arrays[0].shape if arrays else ()
        in_place = not advanced or advanced == list(range(advanced[0], advanced[-1] + 1))
        dims = iter(x.shape)
        shape: list = []
        for k, item in enumerate(items):
            if item is None:
                shape.append(1)
                continue
            d = next(dims)
            if isinstance(item, int):
                if d is not None and not -d <= item < d:
                    raise ShapeError(f"index {item} is out of bounds for size {d} in {format_shape(x.shape)}")
            elif isinstance(item, slice):
                shape.append(None if d is None else len(range(*item.indices(d))))
            elif d is not None and item.size and (item.max() >= d or item.min() < -d):
                raise ShapeError(f"index array out of bounds for size {d} in {format_shape(x.shape)}")
            if advanced and k == advanced[0] and in_place:
                shape.extend(broadcast)
        if advanced and not in_place:
            shape = list(broadcast) + shape
        return Spec(tuple(shape), x.dtype)

    def forward(self, xp, x):
        return x[self.index]

    def vjp(self, F, g, xs, y):
        return (F.apply(GetitemGrad(self.index), g, xs[0]),)

    def cost(self, x: Spec) -> float:
        return 1.0


class GetitemGrad(Op):
    """Scatter (and sum) the gradient of an indexing back into an array shaped like x."""

    name = "getitem_grad"

    def __init__(self, index):
        self.index = index

    def infer(self, g: Spec, x: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, g, x):
        out = xp.zeros(x.shape, dtype=g.dtype)
        if any(isinstance(i, np.ndarray) for i in self.index):
            if xp is np:
                np.add.at(out, self.index, g)  # repeated indices add up
            else:
                import cupyx

                cupyx.scatter_add(out, tuple(xp.asarray(i) if isinstance(i, np.ndarray) else i for i in self.index), g)
        else:
            out[self.index] = g
        return out

    def vjp(self, F, g, xs, y):
        return (F.apply(Getitem(self.index), g), None)

    def cost(self, g: Spec, x: Spec) -> float:
        return float(numel(x))


class Take(Op):
    """Gather along one axis with indices computed at run time (an embedding lookup), as `np.take`.

    Negative indices count from the end; the output has the indices' shape in place of `axis`.
    """

    name = "take"

    def __init__(self, axis: int = 0):
        self.axis = int(axis)

    def infer(self, x: Spec, indices: Spec) -> Spec:
        if indices.dtype.kind not in "iu":
            raise ShapeError(f"indices must be integers, got {indices.dtype}")
        if x.ndim == 0:
            raise ShapeError("cannot take from a scalar")
        (axis,) = normalize_axes(self.axis, x.ndim)
        return Spec(x.shape[:axis] + indices.shape + x.shape[axis + 1:], x.dtype)

    def forward(self, xp, x, indices):
        return xp.take(x, indices, axis=self.axis % x.ndim)

    def vjp(self, F, g, xs, y):
        return (F.apply(TakeGrad(self.axis), g, xs[1], xs[0]), None)

    def cost(self, x: Spec, indices: Spec) -> float:
        return float(numel(self.infer(x, indices)))


class TakeGrad(Op):
    """Scatter-add the gradient of a `take` back into an array shaped like x (repeated indices add up)."""

    name = "take_grad"

    def __init__(self, axis: int):
        self.axis = axis

    def infer(self, g: Spec, indices: Spec, x: Spec) -> Spec:
        return Spec(x.shape, g.dtype)

    def forward(self, xp, g, indices, x):
        axis = self.axis % x.ndim
        out = xp.zeros(x.shape, dtype=g.dtype)
        k = indices.ndim
        rows = xp.moveaxis(g, list(range(axis, axis + k)), list(range(k)))  # indices' dims first
        index = xp.where(indices < 0, indices + x.shape[axis], indices)
        target = xp.moveaxis(out, axis, 0)  # a view: writes land in out
        if xp is np:
            np.add.at(target, index, rows)
        else:
            import cupyx

            cupyx.scatter_add(target, index, rows)
        return out

    def vjp(self, F, h, xs, y):
        return (F.apply(Take(self.axis), h, xs[1]), None, None)

    def cost(self, g: Spec, indices: Spec, x: Spec) -> float:
        return float(numel(x) + numel(g))


class ConstantPad(Op):
    """Pad with a constant: `pads` holds (before, after) sizes, >= 0, for every axis."""

    name = "pad"

    def __init__(self, pads, value=0.0):
        self.pads = tuple((int(a), int(b)) for a, b in pads)
        if any(a < 0 or b < 0 for a, b in self.pads):
            raise ShapeError(f"pad sizes must be >= 0, got {self.pads}")
        self.value = value

    def infer(self, x: Spec) -> Spec:
        if len(self.pads) != x.ndim:
            raise ShapeError(f"{len(self.pads)} (before, after) pairs for {x.ndim} dimensions")
        shape = tuple(None if d is None else d + a + b for d, (a, b) in zip(x.shape, self.pads))
        return Spec(shape, x.dtype)

    def _inner(self, shape):
        return tuple(slice(a, a + d) for d, (a, _) in zip(shape, self.pads))

    def forward(self, xp, x):
        shape = tuple(d + a + b for d, (a, b) in zip(x.shape, self.pads))
        out = xp.full(shape, self.value, dtype=x.dtype)
        out[self._inner(x.shape)] = x
        return out

    def vjp(self, F, g, xs, y):
        return (F.apply(Getitem(tuple(slice(a, -b if b else None) for a, b in self.pads)), g),)


class Identity(Op):
    name = "identity"

    def infer(self, x: Spec) -> Spec:
        return x

    def forward(self, xp, x):
        return x

    def vjp(self, F, g, xs, y):
        return (g,)

    def cost(self, x: Spec) -> float:
        return 0.0


class ZerosLike(Op):
    name = "zeros_like"

    def infer(self, x: Spec) -> Spec:
        return x

    def forward(self, xp, x):
        return xp.zeros_like(x)

    def vjp(self, F, g, xs, y):
        return (None,)


class OnesLike(Op):
    name = "ones_like"

    def infer(self, x: Spec) -> Spec:
        return x

    def forward(self, xp, x):
        return xp.ones_like(x)

    def vjp(self, F, g, xs, y):
        return (None,)


class Count(Op):
    """The number of elements of x over `axes` at run time, as a scalar of `dtype`."""

    name = "count"

    def __init__(self, axes, dtype):
        self.axes = axes
        self.dtype = np.dtype(dtype)

    def infer(self, x: Spec) -> Spec:
        return Spec((), self.dtype)

    def forward(self, xp, x):
        axes = range(x.ndim) if self.axes is None else self.axes
        return xp.asarray(math.prod(x.shape[a] for a in axes), dtype=self.dtype)

    def vjp(self, F, g, xs, y):
        return (None,)

    def cost(self, x: Spec) -> float:
        return 1.0


# -- functions ---------------------------------------------------------------
def reshape(x, shape, name=None):
    return Reshape(shape)(x, name=name)


def transpose(x, axes=None, name=None):
    return Transpose(axes)(x, name=name)


def expand_dims(x, axis, name=None):
    return ExpandDims(axis)(x, name=name)


def squeeze(x, axis, name=None):
    return Squeeze(axis)(x, name=name)


def broadcast_to(x, shape, name=None):
    return BroadcastTo(shape)(x, name=name)


def concat(xs, axis=0, name=None):
    return Concat(axis)(*xs, name=name)


def getitem(x, index, name=None):
    return Getitem(index)(x, name=name)


def take(x, indices, axis=0, name=None):
    """x's entries at `indices` (a vertex or array of integers) along `axis`, as `np.take`."""
    return Take(axis)(x, indices, name=name)


def pad(x, pads, mode="constant", value=0.0, name=None):
    """x padded by `pads`, a (before, after) pair per axis, as `np.pad` in its modes
    "constant" (with `value`), "edge", "reflect" and "wrap".

    The non-constant modes are index lookups along each padded axis (`take` with a fixed
    index array), so they need the sizes of the padded axes when the vertex is built.
    """
    pads = tuple((int(a), int(b)) for a, b in pads)
    if mode == "constant":
        return ConstantPad(pads, value)(x, name=name)
    if mode not in ("edge", "reflect", "wrap"):
        raise ShapeError(f"pad: mode must be constant, edge, reflect or wrap, got {mode!r}")
    out = x
    padded = [axis for axis, (a, b) in enumerate(pads) if a or b]
    for k, axis in enumerate(padded):
        size = x.shape[axis]
        if size is None:
            raise ShapeError(f"pad: mode {mode!r} needs the size of axis {axis}, unknown in {format_shape(x.shape)}")
        a, b = pads[axis]
        index = np.arange(-a, size + b)
        if mode == "edge":
            index = np.clip(index, 0, size - 1)
        elif mode == "wrap":
            index = index % size
        else:  # reflect about the edges, without repeating them
            if size < 2 and (a or b):
                raise ShapeError("pad: mode 'reflect' needs at least 2 entries on a padded axis")
            period = 2 * (size - 1)
            index = index % period
            index = np.where(index >= size, period - index, index)
        out = Take(axis)(out, index, name=name if k == len(padded) - 1 else None)
    return out if padded else Identity()(x, name=name)
