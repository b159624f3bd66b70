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
    astype,
    avg_pool2d,
    broadcast_to,
    clip,
    concat,
    conv2d,
    conv_transpose2d,
    cross_entropy,
    divide,
    equal,
    erf,
    exp,
    expand_dims,
    gelu,
    greater,
    greater_equal,
    hard_sigmoid,
    hard_swish,
    layer_norm,
    leaky_relu,
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
    pad,
    power,
    relu,
    remainder,
    reshape,
    sigmoid,
    sign,
    softmax,
    sqrt,
    squeeze,
    subtract,
    sum,
    take,
    tanh,
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
]
