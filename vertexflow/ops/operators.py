"""Python's operators on vertices: `a + b`, `x @ w`, `h[0]`, `h.T`, `h.sum()`, ...

Attached to `Node` here, from the op library's side, as JAX attaches its
array methods to `Tracer` from the layer above: `graph.py` knows nothing of
ops. Each operator builds a vertex through the function of the same meaning.
"""

from __future__ import annotations

from ..graph import Node
from . import elementwise as ew
from . import reduce, shape


def _binary(fn, reflected: bool = False):
    if reflected:
        return lambda self, other: fn(other, self)
    return lambda self, other: fn(self, other)


_BINARY = {
    "add": ew.add, "sub": ew.subtract, "mul": ew.multiply, "truediv": ew.divide, "pow": ew.power,
}
_COMPARISONS = {
    "gt": ew.greater, "lt": ew.less, "ge": ew.greater_equal, "le": ew.less_equal,
    "eq": ew.equal, "ne": ew.not_equal,
}


def _matmul(a, b):
    from .linalg import matmul

    return matmul(a, b)


def _reshape(self, *new_shape, name: str | None = None) -> Node:
    """`h.reshape(2, -1)` or `h.reshape((2, -1))`."""
    if len(new_shape) == 1 and isinstance(new_shape[0], (tuple, list)):
        new_shape = tuple(new_shape[0])
    return shape.reshape(self, new_shape, name=name)


def _reduction(fn):
    def method(self, axis=None, keepdims: bool = False, name: str | None = None) -> Node:
        return fn(self, axis=axis, keepdims=keepdims, name=name)

    method.__doc__ = f"`vf.{fn.__name__}(self, axis, keepdims)`."
    return method


def attach() -> None:
    """Give `Node` its operators and methods (idempotent)."""
    for name, fn in _BINARY.items():
        setattr(Node, f"__{name}__", _binary(fn))
        setattr(Node, f"__r{name}__", _binary(fn, reflected=True))
    for name, fn in _COMPARISONS.items():
        setattr(Node, f"__{name}__", _binary(fn))
    Node.__matmul__ = _binary(_matmul)
    Node.__rmatmul__ = _binary(_matmul, reflected=True)
    Node.__neg__ = lambda self: ew.negative(self)
    Node.__abs__ = lambda self: ew.abs(self)
    Node.__getitem__ = lambda self, index: shape.getitem(self, index)
    Node.T = property(lambda self: shape.transpose(self), doc="The transpose (all axes reversed).")
    Node.reshape = _reshape
    Node.sum = _reduction(reduce.sum)
    Node.mean = _reduction(reduce.mean)
    Node.max = _reduction(reduce.max)
    Node.astype = lambda self, dtype, name=None: ew.astype(self, dtype, name=name)
    # Defining __eq__ would otherwise drop the inherited hash.
    Node.__hash__ = object.__hash__
