"""vertexflow: dataflow graphs of tensor ops, run as a tape or as a network of vertex actors.

Only re-exports live here; `tests/test_api.py` checks the public names.
"""

from . import autodiff, data, init, nn, ops
from .actors import ActorExecutor
from .autodiff import check_grad, grad
from .benchmarks.measure import benchmark
from .errors import (
    AsyncContextError,
    BenchmarkError,
    DeviceError,
    ExecutionTimeout,
    ExecutorClosed,
    FeedError,
    GraphError,
    InternalError,
    MissingExtraError,
    PartitionLost,
    ShapeError,
    VertexError,
    VertexflowError,
)
from .executor import Executor, SequentialExecutor
from .graph import Graph, Node, Spec
from .nn import optim
from .ops import (
    abs,
    add,
    arccos,
    arccosh,
    arcsin,
    arcsinh,
    arctan,
    arctanh,
    argmax,
    argmin,
    astype,
    avg_pool2d,
    bitwise_and,
    bitwise_not,
    bitwise_or,
    bitwise_xor,
    broadcast_to,
    ceil,
    clip,
    concat,
    conv2d,
    conv_transpose2d,
    cos,
    cosh,
    cross_entropy,
    cumprod,
    cumsum,
    det,
    divide,
    einsum,
    equal,
    erf,
    exp,
    expand_dims,
    floor,
    fourier,
    gather_elements,
    gather_nd,
    gelu,
    greater,
    greater_equal,
    hard_sigmoid,
    hard_swish,
    isinf,
    isnan,
    layer_norm,
    leaky_relu,
    left_shift,
    less,
    less_equal,
    log,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    matmul,
    max,
    max_pool2d,
    maximum,
    mean,
    minimum,
    mse,
    multiply,
    negative,
    not_equal,
    one_hot,
    pad,
    power,
    prod,
    relu,
    remainder,
    reshape,
    right_shift,
    round,
    scatter_elements,
    scatter_nd,
    sigmoid,
    sign,
    sin,
    sinh,
    softmax,
    sqrt,
    squeeze,
    subtract,
    sum,
    take,
    tan,
    tanh,
    topk,
    transpose,
    where,
)
from .streams import StreamExecutor
from .trace import Tracer, trace

__version__ = "0.1.0"


def __getattr__(name: str):
    # `vf.onnx` without `import vertexflow.onnx`, and without importing onnx until a model is loaded.
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module 'vertexflow' has no attribute {name!r}")

__all__ = [
    "Graph", "Node", "Spec", "Executor", "SequentialExecutor", "ActorExecutor", "StreamExecutor",
    "grad", "check_grad", "trace", "Tracer", "benchmark", "autodiff", "data", "init", "nn", "ops", "optim",
    "VertexflowError", "ShapeError", "FeedError", "GraphError", "VertexError",
    "ExecutionTimeout", "ExecutorClosed", "AsyncContextError", "BenchmarkError", "DeviceError", "InternalError",
    "MissingExtraError", "PartitionLost",
    "abs", "add", "astype", "avg_pool2d", "broadcast_to", "clip", "concat", "conv2d", "conv_transpose2d", "cross_entropy",
    "divide", "equal", "erf", "exp", "expand_dims", "gelu", "greater", "greater_equal", "hard_sigmoid", "hard_swish",
    "leaky_relu", "less",
    "layer_norm", "less_equal", "log", "log_softmax", "logical_and", "logical_not", "logical_or", "logical_xor",
    "matmul", "max", "max_pool2d", "maximum", "mean", "minimum", "mse", "multiply", "negative", "not_equal",
    "pad", "power", "relu", "remainder", "reshape", "sigmoid", "sign", "softmax", "sqrt", "squeeze", "subtract",
    "sum", "take", "tanh", "transpose", "where",
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh",
    "floor", "ceil", "round", "isnan", "isinf", "fourier",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "left_shift", "right_shift",
    "argmax", "argmin", "topk", "cumsum", "cumprod", "prod", "gather_elements", "scatter_elements",
    "gather_nd", "scatter_nd", "one_hot", "einsum", "det",
]
