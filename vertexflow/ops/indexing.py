"""Selection and indexing ops: arg-max/min, top-k, running sums and products, products over axes,
gathers and scatters along an axis or by index tuples, one-hot codes, and einsum.

Positions follow numpy: a negative index counts from the end of its axis. Each differentiable op's
derivative rule sits below its forward; a gather's derivative is a scatter that adds (positions
gathered twice get both gradients), and a scatter's is a gather.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..graph import Spec, as_dtype
from .base import Op, normalize_axes, numel, require_numeric


def _axis(axis: int, ndim: int, what: str) -> int:
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ShapeError(f"{what}: axis {axis} is out of range for {ndim} dimensions")
    return axis % max(ndim, 1)


def _require_index(spec: Spec, what: str) -> None:
    if spec.dtype.kind not in "iu":
        raise ShapeError(f"{what} needs integer indices, got {spec.dtype}")


def _wrapped(xp, index, size):
    """Indices with negative ones counted from the end."""
    return xp.where(index < 0, index + size, index)


def _along(xp, index, axis: int) -> tuple:
    """The full index tuple addressing, for each entry of `index`, that position along `axis` (the
    other coordinates its own): what take_along_axis reads and what a scatter along an axis writes."""
    grids = list(xp.indices(index.shape, sparse=True))
    grids[axis] = index
    return tuple(grids)


# -- arg-max and arg-min ------------------------------------------------------------------------
class ArgMax(Op):
    """The position of the largest (or with `smallest`, the smallest) value along an axis, as int64;
    ties go to the first position, or the last with `select_last`."""

    name = "argmax"

    def __init__(self, axis: int = 0, keepdims: bool = True, select_last: bool = False, smallest: bool = False):
        self.axis, self.keepdims = int(axis), bool(keepdims)
        self.select_last, self.smallest = bool(select_last), bool(smallest)

    def infer(self, x: Spec) -> Spec:
        require_numeric(x)
        axis = _axis(self.axis, x.ndim, self.name)
        shape = list(x.shape)
        if self.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        return Spec(tuple(shape), "int64")

    def forward(self, xp, x):
        axis = self.axis % x.ndim
        pick = xp.argmin if self.smallest else xp.argmax
        if self.select_last:
            out = x.shape[axis] - 1 - pick(xp.flip(x, axis), axis=axis)
        else:
            out = pick(x, axis=axis)
        out = out.astype(xp.int64, copy=False)
        return xp.expand_dims(out, axis) if self.keepdims else out

    def vjp(self, F, g, xs, y):
        return (None,)


class TopKIndices(Op):
    """The positions of the k largest (or smallest) values along an axis, largest first (smallest
    first); equal values keep their order (the lower position first)."""

    name = "topk_indices"

    def __init__(self, k: int, axis: int = -1, largest: bool = True):
        self.k, self.axis, self.largest = int(k), int(axis), bool(largest)

    def infer(self, x: Spec) -> Spec:
        require_numeric(x)
        axis = _axis(self.axis, x.ndim, self.name)
        size = x.shape[axis]
        if self.k < 0 or (size is not None and self.k > size):
            raise ShapeError(f"topk: k={self.k} is not within the {size} values along axis {axis}")
        return Spec(x.shape[:axis] + (self.k,) + x.shape[axis + 1:], "int64")

    def forward(self, xp, x):
        axis = self.axis % x.ndim
        if self.largest:  # a stable sort of the reversed axis, reversed: descending, ties by position
            n = x.shape[axis]
            order = n - 1 - xp.flip(xp.argsort(xp.flip(x, axis), axis=axis, kind="stable"), axis)
        else:
            order = xp.argsort(x, axis=axis, kind="stable")
        index = [slice(None)] * x.ndim
        index[axis] = slice(0, self.k)
        return order[tuple(index)].astype(xp.int64, copy=False)

    def vjp(self, F, g, xs, y):
        return (None,)


# -- running sums and products, products over axes ----------------------------------------------
class _Running(Op):
    """A running reduction along an axis: `exclusive` leaves each value out of its own result,
    `reverse` runs from the end. The output is shaped as the input."""

    def __init__(self, axis: int = 0, exclusive: bool = False, reverse: bool = False):
        self.axis, self.exclusive, self.reverse = int(axis), bool(exclusive), bool(reverse)

    def infer(self, x: Spec) -> Spec:
        require_numeric(x)
        _axis(self.axis, x.ndim, self.name)
        return x


class CumSum(_Running):
    """Running sums along an axis."""

    name = "cumsum"

    def forward(self, xp, x):
        axis = self.axis % x.ndim
        data = xp.flip(x, axis) if self.reverse else x
        out = xp.cumsum(data, axis=axis, dtype=x.dtype)
        if self.exclusive:
            out = xp.subtract(out, data, out=out)
        return xp.flip(out, axis) if self.reverse else out

    def vjp(self, F, g, xs, y):
        return (F.apply(CumSum(self.axis, self.exclusive, not self.reverse), g),)


class CumProd(_Running):
    """Running products along an axis."""

    name = "cumprod"

    def forward(self, xp, x):
        axis = self.axis % x.ndim
        data = xp.flip(x, axis) if self.reverse else x
        out = _exclusive_cumprod(xp, data, axis) if self.exclusive else xp.cumprod(data, axis=axis, dtype=x.dtype)
        return xp.flip(out, axis) if self.reverse else out

    def vjp(self, F, g, xs, y):
        return (F.apply(CumProdGrad(self.axis, self.exclusive, self.reverse), g, xs[0]),)


def _exclusive_cumprod(xp, x, axis: int):
    """prod(x[..., :j]) at each j along `axis` (1 at the first)."""
    ones = xp.ones_like(xp.take(x, [0], axis=axis))
    head = xp.concatenate([ones, xp.take(x, xp.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
    return xp.cumprod(head, axis=axis, dtype=x.dtype)


class CumProdGrad(Op):
    """The derivative of a running product, exact where inputs are zero (no division): input i's
    gradient is prod(x[:i]) * S_i with S_i = g_i + x_{i+1} S_{i+1} (inclusive), or
    S_i = g_{i+1} + x_{i+1} S_{i+1} (exclusive), one pass from the end."""

    name = "cumprod_grad"

    def __init__(self, axis: int, exclusive: bool, reverse: bool):
        self.axis, self.exclusive, self.reverse = int(axis), bool(exclusive), bool(reverse)

    def infer(self, g: Spec, x: Spec) -> Spec:
        return x

    def forward(self, xp, g, x):
        axis = self.axis % x.ndim
        if self.reverse:
            g, x = xp.flip(g, axis), xp.flip(x, axis)
        g, x = xp.moveaxis(g, axis, 0), xp.moveaxis(x, axis, 0)
        n = x.shape[0]
        s = xp.zeros_like(x)
        running = xp.zeros_like(x[0]) if n else None
        for i in range(n - 1, -1, -1):
            if self.exclusive:
                running = (g[i + 1] + x[i + 1] * running) if i + 1 < n else xp.zeros_like(x[0])
            else:
                running = g[i] + (x[i + 1] * running if i + 1 < n else 0)
            s[i] = running
        out = xp.moveaxis(_exclusive_cumprod(xp, x, 0) * s, 0, axis)
        return xp.flip(out, axis) if self.reverse else out


class Prod(Op):
    """The product over axes (None: all)."""

    name = "prod"

    def __init__(self, axis=None, keepdims: bool = False):
        self.axis, self.keepdims = axis, bool(keepdims)

    def infer(self, x: Spec) -> Spec:
        require_numeric(x)
        axes = normalize_axes(self.axis, x.ndim)
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if self.keepdims else \
            [d for i, d in enumerate(x.shape) if i not in axes]
        return Spec(tuple(shape), x.dtype)

    def forward(self, xp, x):
        return xp.prod(x, axis=normalize_axes(self.axis, x.ndim), keepdims=self.keepdims, dtype=x.dtype)

    def vjp(self, F, g, xs, y):
        return (F.apply(ProdGrad(self.axis, self.keepdims), g, xs[0]),)

    def cost(self, x: Spec) -> float:
        return float(numel(x))


class ProdGrad(Op):
    """The derivative of a product: each input's gradient is g times the product of the others, from
    running products from both ends (exact where inputs are zero)."""

    name = "prod_grad"

    def __init__(self, axis, keepdims: bool):
        self.axis, self.keepdims = axis, bool(keepdims)

    def infer(self, g: Spec, x: Spec) -> Spec:
        return x

    def forward(self, xp, g, x):
        axes = normalize_axes(self.axis, x.ndim)
        rest = [a for a in range(x.ndim) if a not in axes]
        moved = xp.transpose(x, rest + list(axes))
        flat = moved.reshape(moved.shape[:len(rest)] + (-1,))
        before = _exclusive_cumprod(xp, flat, -1)
        after = xp.flip(_exclusive_cumprod(xp, xp.flip(flat, -1), -1), -1)
        others = (before * after).reshape(moved.shape)
        others = xp.transpose(others, np.argsort(rest + list(axes)))
        if not self.keepdims:
            g = xp.expand_dims(g, axes)
        return g * others


# -- gathers and scatters along an axis ---------------------------------------------------------
class GatherElements(Op):
    """out[i][j][k] = x[index[i][j][k]][j][k] along `axis` (numpy's take_along_axis, the index no
    larger than the data along the other axes)."""

    name = "gather_elements"

    def __init__(self, axis: int = 0):
        self.axis = int(axis)

    def infer(self, x: Spec, index: Spec) -> Spec:
        _require_index(index, self.name)
        if x.ndim != index.ndim:
            raise ShapeError(f"gather_elements: the index has {index.ndim} dimensions, the data {x.ndim}")
        _axis(self.axis, x.ndim, self.name)
        return Spec(index.shape, x.dtype)

    def forward(self, xp, x, index):
        axis = self.axis % x.ndim
        return x[_along(xp, _wrapped(xp, index, x.shape[axis]), axis)]

    def vjp(self, F, g, xs, y):
        x, index = xs
        return (F.apply(ScatterElements(self.axis, "add"), F.zeros_like(x), index, g), None)


class ScatterElements(Op):
    """A copy of `x` with `updates` written at `index` along `axis`; `reduction` combines each
    update with what is there ("none": replace, "add", "mul", "max", "min")."""

    name = "scatter_elements"
    REDUCTIONS = {"none": None, "add": "add", "mul": "multiply", "max": "maximum", "min": "minimum"}

    def __init__(self, axis: int = 0, reduction: str = "none"):
        if reduction not in self.REDUCTIONS:
            raise ShapeError(f"scatter: reduction={reduction!r}; expected one of {sorted(self.REDUCTIONS)}")
        self.axis, self.reduction = int(axis), reduction

    def infer(self, x: Spec, index: Spec, updates: Spec) -> Spec:
        _require_index(index, self.name)
        if x.ndim != index.ndim or index.shape != updates.shape:
            raise ShapeError(f"scatter_elements: index {index.shape} and updates {updates.shape} must match, "
                             f"with as many dimensions as the data {x.shape}")
        _axis(self.axis, x.ndim, self.name)
        return x

    def forward(self, xp, x, index, updates):
        axis = self.axis % x.ndim
        out = x.copy()
        where = _along(xp, _wrapped(xp, index, x.shape[axis]), axis)
        ufunc = self.REDUCTIONS[self.reduction]
        if ufunc is None:
            out[where] = updates
        else:
            getattr(xp, ufunc).at(out, where, updates.astype(x.dtype, copy=False))
        return out

    def vjp(self, F, g, xs, y):
        x, index, updates = xs
        if self.reduction == "add":
            return (g, None, F.apply(GatherElements(self.axis), g, index))
        if self.reduction == "none":  # positions written lose the data's gradient to the updates'
            cleared = F.apply(ScatterElements(self.axis), g, index, F.zeros_like(updates))
            return (cleared, None, F.apply(GatherElements(self.axis), g, index))
        return (None, None, None)


# -- gathers and scatters by index tuples -------------------------------------------------------
class GatherND(Op):
    """Slices of `x` addressed by the index tuples in the last axis of `index`, the first
    `batch_dims` axes shared."""

    name = "gather_nd"

    def __init__(self, batch_dims: int = 0):
        self.batch_dims = int(batch_dims)

    def infer(self, x: Spec, index: Spec) -> Spec:
        _require_index(index, self.name)
        b, depth = self.batch_dims, index.shape[-1] if index.ndim else None
        if depth is None:
            raise ShapeError("gather_nd: the index's last size (the tuple length) must be known")
        if b + depth > x.ndim:
            raise ShapeError(f"gather_nd: tuples of {depth} after {b} batch axes address more than {x.ndim} axes")
        return Spec(index.shape[:-1] + x.shape[b + depth:], x.dtype)

    def forward(self, xp, x, index):
        return x[_nd_index(xp, x.shape, index, self.batch_dims)]

    def vjp(self, F, g, xs, y):
        x, index = xs
        return (F.apply(ScatterND("add", self.batch_dims), F.zeros_like(x), index, g), None)


def _nd_index(xp, shape, index, batch_dims: int) -> tuple:
    """The advanced-index tuple that reads the slices `index` addresses (batch axes aligned)."""
    depth = index.shape[-1]
    lead = index.shape[:-1]
    parts = []
    for axis in range(batch_dims):
        grid = xp.arange(shape[axis]).reshape((-1,) + (1,) * (len(lead) - axis - 1))
        parts.append(grid)
    for k in range(depth):
        size = shape[batch_dims + k]
        parts.append(_wrapped(xp, index[..., k], size))
    return tuple(parts)


class ScatterND(Op):
    """A copy of `x` with `updates` written at the slices the index tuples address (`reduction` as
    ScatterElements'); ONNX's ScatterND with `batch_dims=0`."""

    name = "scatter_nd"

    def __init__(self, reduction: str = "none", batch_dims: int = 0):
        if reduction not in ScatterElements.REDUCTIONS:
            raise ShapeError(f"scatter_nd: reduction={reduction!r}; expected one of "
                             f"{sorted(ScatterElements.REDUCTIONS)}")
        self.reduction, self.batch_dims = reduction, int(batch_dims)

    def infer(self, x: Spec, index: Spec, updates: Spec) -> Spec:
        _require_index(index, self.name)
        return x

    def forward(self, xp, x, index, updates):
        out = x.copy()
        where = _nd_index(xp, x.shape, index, self.batch_dims)
        ufunc = ScatterElements.REDUCTIONS[self.reduction]
        if ufunc is None:
            out[where] = updates
        else:
            getattr(xp, ufunc).at(out, where, updates.astype(x.dtype, copy=False))
        return out

    def vjp(self, F, g, xs, y):
        x, index, updates = xs
        if self.reduction == "add":
            return (g, None, F.apply(GatherND(self.batch_dims), g, index))
        if self.reduction == "none":
            cleared = F.apply(ScatterND("none", self.batch_dims), g, index, F.zeros_like(updates))
            return (cleared, None, F.apply(GatherND(self.batch_dims), g, index))
        return (None, None, None)


# -- one-hot codes ------------------------------------------------------------------------------
class OneHotIndices(Op):
    """`on` where an axis' position equals the index, `off` elsewhere (a new axis of `depth`
    positions at `axis`); negative indices count from the end, indices out of range give all `off`.
    Inputs: the indices and a pair (off, on) whose dtype the output takes."""

    name = "one_hot_indices"

    def __init__(self, depth: int, axis: int = -1):
        self.depth, self.axis = int(depth), int(axis)
        if self.depth < 0:
            raise ShapeError(f"one_hot: depth {self.depth} must be >= 0")

    def infer(self, index: Spec, values: Spec) -> Spec:
        require_numeric(index)
        if values.shape not in ((2,), (None,)):
            raise ShapeError(f"one_hot: values must be a pair (off, on), got shape {values.shape}")
        axis = _axis(self.axis, index.ndim + 1, self.name)
        return Spec(index.shape[:axis] + (self.depth,) + index.shape[axis:], values.dtype)

    def forward(self, xp, index, values):
        axis = self.axis % (index.ndim + 1)
        index = index.astype(xp.int64) if index.dtype.kind == "f" else index  # ONNX truncates float indices
        index = _wrapped(xp, index, self.depth)
        shape = [1] * (index.ndim + 1)
        shape[axis] = self.depth
        hit = xp.expand_dims(index, axis) == xp.arange(self.depth).reshape(shape)
        return xp.where(hit, values[1], values[0])

    def vjp(self, F, g, xs, y):
        return (None, None)


# -- einsum -------------------------------------------------------------------------------------
class Einsum(Op):
    """numpy's einsum (an optimized contraction order), e.g. "bij,bjk->bik"."""

    name = "einsum"
    blas = True

    def __init__(self, equation: str):
        self.equation = equation.replace(" ", "")

    def _parts(self, specs) -> tuple[list[str], str]:
        """Each operand's subscripts and the output's, with "..." spelt out as letters."""
        lhs, _, rhs = self.equation.partition("->")
        inputs = lhs.split(",")
        if len(inputs) != len(specs):
            raise ShapeError(f"einsum {self.equation!r} names {len(inputs)} operands, got {len(specs)}")
        spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in self.equation]
        widest = max((s.ndim - len(t.replace("...", "")) for t, s in zip(inputs, specs) if "..." in t), default=0)
        ellipsis = "".join(spare[:widest])
        spelt = []
        for terms, spec in zip(inputs, specs):
            if "..." in terms:
                n = spec.ndim - len(terms.replace("...", ""))
                terms = terms.replace("...", ellipsis[widest - n:] if n else "")
            if len(terms) != spec.ndim:
                raise ShapeError(f"einsum {self.equation!r}: operand {terms!r} has {spec.ndim} dimensions")
            spelt.append(terms)
        if "->" in self.equation:
            out = rhs.replace("...", ellipsis)
        else:  # implicit: the letters seen once, in alphabetical order, after the broadcast axes
            counts = {c: "".join(spelt).count(c) for c in set("".join(spelt))}
            out = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis))
        return spelt, out

    def infer(self, *specs: Spec) -> Spec:
        inputs, out = self._parts(specs)
        sizes: dict[str, int | None] = {}
        for terms, spec in zip(inputs, specs):
            for c, d in zip(terms, spec.shape):
                if d is not None and d != 1:
                    if sizes.get(c) not in (None, 1, d):
                        raise ShapeError(f"einsum {self.equation!r}: {c!r} is {sizes[c]} and {d}")
                    sizes[c] = d
                else:
                    sizes.setdefault(c, d)
        dtype = np.result_type(*(s.dtype for s in specs))
        return Spec(tuple(sizes[c] for c in out), dtype)

    def forward(self, xp, *xs):
        inputs, out = self._parts([Spec(x.shape, x.dtype) for x in xs])
        dtype = np.result_type(*(x.dtype for x in xs))
        if dtype.kind not in "biufc":  # bfloat16 and other ml_dtypes: numpy's einsum computes in float32
            xs = [x.astype(np.float32) for x in xs]
        return xp.einsum(",".join(inputs) + "->" + out, *xs, optimize=True).astype(dtype, copy=False)

    def vjp(self, F, g, xs, y):
        return tuple(F.apply(EinsumGrad(self.equation, i), g, *xs) if need else None
                     for i, need in enumerate(F.needs_input_grad or (True,) * len(xs)))

    def cost(self, *specs: Spec) -> float:
        inputs, out = self._parts(specs)
        sizes = {}
        for terms, spec in zip(inputs, specs):
            for c, d in zip(terms, spec.shape):
                sizes[c] = max(sizes.get(c, 1), d or 1)
        return float(2 * np.prod([float(v) for v in sizes.values()]))


class EinsumGrad(Op):
    """Operand i's gradient of an einsum: the output's gradient contracted with the other operands
    onto operand i's subscripts (summed-out letters of operand i alone broadcast back, a repeated
    letter's gradient placed on its diagonal)."""

    name = "einsum_grad"
    blas = True

    def __init__(self, equation: str, operand: int):
        self.equation, self.operand = equation, int(operand)

    def infer(self, g: Spec, *xs: Spec) -> Spec:
        return xs[self.operand]

    def forward(self, xp, g, *xs):
        inputs, out = Einsum(self.equation)._parts([Spec(x.shape, x.dtype) for x in xs])
        mine = inputs[self.operand]
        x = xs[self.operand]
        unique = "".join(dict.fromkeys(mine))  # a repeated letter (a diagonal) once
        others = [t for k, t in enumerate(inputs) if k != self.operand]
        seen = set(out).union(*others)
        kept = "".join(c for c in unique if c in seen)
        operands = [g] + [v for k, v in enumerate(xs) if k != self.operand]
        part = xp.einsum(",".join([out] + others) + "->" + kept, *operands, optimize=True)
        sizes = {c: x.shape[mine.index(c)] for c in unique}
        part = part.reshape([part.shape[kept.index(c)] if c in kept else 1 for c in unique])
        # a broadcast operand axis (size 1 against a larger one elsewhere) sums its gradient
        axes = tuple(k for k, c in enumerate(unique) if sizes[c] == 1 and part.shape[k] != 1)
        if axes:
            part = part.sum(axis=axes, keepdims=True)
        part = xp.broadcast_to(part, [sizes[c] for c in unique])
        if unique == mine:
            return part.astype(x.dtype, copy=True)
        # letters repeated in the operand: the gradient lives on that diagonal, zero elsewhere
        grids = [xp.arange(sizes[c]).reshape([-1 if j == k else 1 for j in range(len(unique))])
                 for k, c in enumerate(unique)]
        grad = xp.zeros(x.shape, dtype=x.dtype)
        grad[tuple(grids[unique.index(c)] for c in mine)] = part
        return grad


# -- functions ----------------------------------------------------------------------------------
def argmax(x, axis: int = 0, keepdims: bool = True, select_last: bool = False, name=None):
    return ArgMax(axis, keepdims, select_last)(x, name=name)


def argmin(x, axis: int = 0, keepdims: bool = True, select_last: bool = False, name=None):
    return ArgMax(axis, keepdims, select_last, smallest=True)(x, name=name)


def topk(x, k: int, axis: int = -1, largest: bool = True, name=None):
    """(values, indices) of the k largest (smallest) along `axis`; the values are differentiable."""
    index = TopKIndices(k, axis, largest)(x, name=None if name is None else name + "_indices")
    return GatherElements(axis)(x, index, name=name), index


def cumsum(x, axis: int = 0, exclusive: bool = False, reverse: bool = False, name=None):
    return CumSum(axis, exclusive, reverse)(x, name=name)


def cumprod(x, axis: int = 0, exclusive: bool = False, reverse: bool = False, name=None):
    return CumProd(axis, exclusive, reverse)(x, name=name)


def prod(x, axis=None, keepdims: bool = False, name=None):
    return Prod(axis, keepdims)(x, name=name)


def gather_elements(x, index, axis: int = 0, name=None):
    return GatherElements(axis)(x, index, name=name)


def scatter_elements(x, index, updates, axis: int = 0, reduction: str = "none", name=None):
    return ScatterElements(axis, reduction)(x, index, updates, name=name)


def gather_nd(x, index, batch_dims: int = 0, name=None):
    return GatherND(batch_dims)(x, index, name=name)


def scatter_nd(x, index, updates, reduction: str = "none", name=None):
    return ScatterND(reduction)(x, index, updates, name=name)


def one_hot(index, depth: int, values=(0.0, 1.0), axis: int = -1, dtype="float32", name=None):
    """A new axis of `depth` positions holding values[1] at each index and values[0] elsewhere."""
    if not hasattr(values, "graph"):
        values = np.asarray(values, dtype=as_dtype(dtype))
    return OneHotIndices(depth, axis)(index, values, name=name)


def einsum(equation: str, *operands, name=None):
    return Einsum(equation)(*operands, name=name)
