"""The math namespace `F` that derivative rules are written against, in its two forms.

Every method is defined once, in `Math`, as "apply this op": `ArrayMath`
applies it to arrays now (runtime backward in every executor), `GraphMath`
adds a vertex for it (symbolic `vf.grad`). Because both forms run the same
ops' forwards in the same order, a gradient built as vertices and run later
equals, bit for bit, the gradient computed at run time.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from ..graph import Node
from ..ops import elementwise as ew
from ..ops import linalg, reduce, shape
from ..ops.base import Op, normalize_axes, scalar_dtype, sum_to

_ADD, _SUB, _MUL, _DIV = ew.Add(), ew.Subtract(), ew.Multiply(), ew.Divide()
_NEG, _EXP, _LOG, _SIGN, _POW = ew.Negative(), ew.Exp(), ew.Log(), ew.Sign(), ew.Power()
_GREATER, _LESS, _EQUAL, _WHERE = ew.Greater(), ew.Less(), ew.Equal(), ew.Where()
_MATMUL = linalg.Matmul()
_RESHAPE_LIKE, _BROADCAST_LIKE, _SUM_TO = shape.ReshapeLike(), shape.BroadcastLike(), shape.SumToLike()
_ZEROS_LIKE, _ONES_LIKE = shape.ZerosLike(), shape.OnesLike()
_PY_SCALARS = (bool, int, float)


class Math(abc.ABC):
    """Operations available to derivative rules; subclasses say how an op is applied."""

    needs_input_grad: tuple[bool, ...] = ()

    @abc.abstractmethod
    def apply(self, op: Op, *args):
        """Apply `op` to the arguments: compute now (arrays) or add a vertex (graph)."""

    # elementwise
    def add(self, a, b):
        return self.apply(_ADD, a, b)

    def sub(self, a, b):
        return self.apply(_SUB, a, b)

    def mul(self, a, b):
        return self.apply(_MUL, a, b)

    def div(self, a, b):
        return self.apply(_DIV, a, b)

    def neg(self, x):
        return self.apply(_NEG, x)

    def power(self, a, b):
        return self.apply(_POW, a, b)

    def exp(self, x):
        return self.apply(_EXP, x)

    def log(self, x):
        return self.apply(_LOG, x)

    def sign(self, x):
        return self.apply(_SIGN, x)

    def greater(self, a, b):
        return self.apply(_GREATER, a, b)

    def less(self, a, b):
        return self.apply(_LESS, a, b)

    def equal(self, a, b):
        return self.apply(_EQUAL, a, b)

    def where(self, cond, a, b):
        return self.apply(_WHERE, cond, a, b)

    def cast(self, x, dtype):
        return self.apply(ew.Cast(dtype), x)

    # linear algebra, reductions, movement
    def matmul(self, a, b):
        return self.apply(_MATMUL, a, b)

    def sum(self, x, axis=None, keepdims=False):
        return self.apply(reduce.Sum(axis, keepdims), x)

    def softmax(self, x, axis=-1):
        return self.apply(reduce.Softmax(axis), x)

    def transpose(self, x, axes=None):
        return self.apply(shape.Transpose(axes), x)

    def expand_dims(self, x, axes):
        return self.apply(shape.ExpandDims(axes), x)

    def squeeze(self, x, axes):
        return self.apply(shape.Squeeze(axes), x)

    def reshape_like(self, x, like):
        return self.apply(_RESHAPE_LIKE, x, like)

    def broadcast_like(self, x, like):
        return self.apply(_BROADCAST_LIKE, x, like)

    def sum_to(self, x, like):
        """x summed over broadcast dimensions back to the shape of `like`."""
        return self.apply(_SUM_TO, x, like)

    def zeros_like(self, x):
        return self.apply(_ZEROS_LIKE, x)

    def ones_like(self, x):
        return self.apply(_ONES_LIKE, x)


class ArrayMath(Math):
    """F on arrays of module `xp` (numpy or cupy): each call computes now."""

    __slots__ = ("xp", "needs_input_grad")

    def __init__(self, xp, needs_input_grad: tuple[bool, ...] = ()):
        self.xp = xp
        self.needs_input_grad = needs_input_grad

    def apply(self, op: Op, *args):
        for a in args:
            if type(a) in _PY_SCALARS:
                args = self._arrays(args)
                break
        return op.forward(self.xp, *args)

    def _arrays(self, args: tuple) -> tuple:
        """Python scalars as 0-d arrays of the dtype numpy would give them beside the arrays."""
        dtypes = [a.dtype for a in args if type(a) not in _PY_SCALARS]
        return tuple(
            self.xp.asarray(a, dtype=scalar_dtype(dtypes, a)) if type(a) in _PY_SCALARS else a for a in args
        )

    def ndim(self, x) -> int:
        return x.ndim

    def dtype(self, x):
        return x.dtype

    def sum_to(self, x, like):
        return sum_to(self.xp, x, like.shape)

    # Movement and products straight on the arrays (what their ops' forward does, without making an op
    # per call: derivative rules call these several times each).
    def transpose(self, x, axes=None):
        return self.xp.transpose(x, None if axes is None else tuple(int(a) for a in axes))

    def expand_dims(self, x, axes):
        return self.xp.expand_dims(x, _axes(axes))

    def squeeze(self, x, axes):
        return self.xp.squeeze(x, _axes(axes))

    def matmul(self, a, b):
        return _MATMUL.forward(self.xp, a, b, transposed=False)

    def count(self, x, axes, dtype):
        """Elements of x over `axes` (None: all), as a scalar of `dtype`."""
        axes = range(x.ndim) if axes is None else axes
        return self.xp.asarray(math.prod(x.shape[a] for a in axes), dtype=dtype)


class GraphMath(Math):
    """F on vertices: each call adds a gradient vertex to the graph."""

    def __init__(self, needs_input_grad: tuple[bool, ...] = ()):
        self.needs_input_grad = needs_input_grad

    def apply(self, op: Op, *args) -> Node:
        return op(*args, role="grad")

    def ndim(self, x: Node) -> int:
        return x.ndim

    def dtype(self, x: Node):
        return x.dtype

    def sum_to(self, x: Node, like: Node):
        if x.spec.static and x.shape == like.shape:
            return x
        return self.apply(_SUM_TO, x, like)

    def count(self, x: Node, axes, dtype):
        axes = normalize_axes(axes, x.ndim)
        dims = [x.shape[a] for a in axes]
        if None in dims:
            return self.apply(shape.Count(axes, dtype), x)
        return x.graph.scalar(math.prod(dims), dtype)


def _axes(axes) -> tuple[int, ...]:
    """Axes as a tuple (as ExpandDims and Squeeze hold them)."""
    return (int(axes),) if isinstance(axes, (int, np.integer)) else tuple(axes)
