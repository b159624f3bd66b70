"""The op library: one class per operation, and the functions that build their vertices.

Ops are grouped as in tinygrad: elementwise (unary, binary, comparisons),
reductions, movement (shape), linear algebra and network ops. A user op is a
subclass of `Op`; calling an instance on nodes adds a vertex.
"""

from .activation import hard_sigmoid, hard_swish
from .base import Op, broadcast_shapes, numel, sum_to_shape
from .elementwise import (
    abs,
    add,
    arccos,
    arccosh,
    arcsin,
    arcsinh,
    arctan,
    arctanh,
    astype,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    ceil,
    clip,
    cos,
    cosh,
    divide,
    equal,
    erf,
    exp,
    floor,
    gelu,
    greater,
    greater_equal,
    isinf,
    isnan,
    leaky_relu,
    left_shift,
    less,
    less_equal,
    log,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    relu,
    remainder,
    right_shift,
    round,
    sigmoid,
    sign,
    sin,
    sinh,
    sqrt,
    subtract,
    tan,
    tanh,
    where,
)
from .indexing import (
    argmax,
    argmin,
    cumprod,
    cumsum,
    einsum,
    gather_elements,
    gather_nd,
    one_hot,
    prod,
    scatter_elements,
    scatter_nd,
    topk,
)
from .linalg import det, matmul
from .nn import avg_pool2d, conv2d, conv_transpose2d, cross_entropy, layer_norm, max_pool2d, mse
from .operators import attach as _attach_operators
from .reduce import log_softmax, max, mean, min, softmax, sum
from .sampling import affine_grid, grid_sample
from .shape import broadcast_to, concat, expand_dims, getitem, pad, reshape, squeeze, take, transpose
from .spectral import fourier

_attach_operators()


def builtin_ops() -> list[type[Op]]:
    """Every concrete op class vertexflow defines, derivative helpers included (the op registry)."""
    found: dict[str, type[Op]] = {}
    stack = list(Op.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # A concrete op names itself; bases (Unary, Compare, Pool2d, ...) do not. The benchmark
        # families' ops stand in for a user's own (an async "remote" call): not part of the library.
        ours = cls.__module__.startswith("vertexflow.") and not cls.__module__.startswith("vertexflow.benchmarks.")
        if ours and "name" in vars(cls) and not cls.__abstractmethods__:
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]

__all__ = [
    "Op", "broadcast_shapes", "builtin_ops", "numel", "sum_to_shape",
    "abs", "add", "astype", "clip", "divide", "equal", "erf", "exp", "gelu", "greater", "greater_equal",
    "hard_sigmoid", "hard_swish", "leaky_relu",
    "less", "less_equal", "log", "logical_and", "logical_not", "logical_or", "logical_xor", "maximum", "minimum", "multiply", "negative", "not_equal",
    "power", "relu", "remainder", "sigmoid", "sign", "sqrt", "subtract", "tanh", "where",
    "matmul", "avg_pool2d", "conv2d", "conv_transpose2d", "cross_entropy", "layer_norm", "max_pool2d", "mse",
    "log_softmax", "max", "mean", "min", "softmax", "sum",
    "broadcast_to", "concat", "expand_dims", "getitem", "pad", "reshape", "squeeze", "take", "transpose",
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh",
    "floor", "ceil", "round", "isnan", "isinf",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "left_shift", "right_shift",
    "argmax", "argmin", "topk", "cumsum", "cumprod", "prod", "gather_elements", "scatter_elements",
    "gather_nd", "scatter_nd", "one_hot", "einsum", "det", "grid_sample", "affine_grid", "fourier",
]
