"""The op library: one class per operation, and the functions that build their vertices.

Ops are grouped as in tinygrad: elementwise (unary, binary, comparisons),
reductions, movement (shape), linear algebra and network ops. A user op is a
subclass of `Op`; calling an instance on nodes adds a vertex.
"""

from .base import Op, broadcast_shapes, numel, sum_to_shape
from .elementwise import (
    abs,
    add,
    astype,
    divide,
    equal,
    exp,
    greater,
    greater_equal,
    leaky_relu,
    less,
    less_equal,
    log,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    relu,
    sigmoid,
    sign,
    sqrt,
    subtract,
    tanh,
    where,
)
from .linalg import matmul
from .nn import avg_pool2d, conv2d, cross_entropy, max_pool2d, mse
from .reduce import log_softmax, max, mean, softmax, sum
from .shape import broadcast_to, concat, expand_dims, getitem, reshape, squeeze, transpose

__all__ = [
    "Op", "broadcast_shapes", "numel", "sum_to_shape",
    "abs", "add", "astype", "divide", "equal", "exp", "greater", "greater_equal", "leaky_relu",
    "less", "less_equal", "log", "maximum", "minimum", "multiply", "negative", "not_equal",
    "power", "relu", "sigmoid", "sign", "sqrt", "subtract", "tanh", "where",
    "matmul", "avg_pool2d", "conv2d", "cross_entropy", "max_pool2d", "mse",
    "log_softmax", "max", "mean", "softmax", "sum",
    "broadcast_to", "concat", "expand_dims", "getitem", "reshape", "squeeze", "transpose",
]
