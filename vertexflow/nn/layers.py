"""Layers: objects that own named params and build vertices when called on a node.

A layer is built once per graph: `layer(x)` adds its params to x's graph
(named `{layer name}.{param}`) and returns the output vertex. `Sequential`
chains layers. Training-time behaviour (dropout) follows a `Mode` shared by
the layers of one model; switching it takes effect at the next run, like a
param's new value.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np

from .. import ops
from ..errors import GraphError, ShapeError
from ..graph import Node, Spec
from ..ops.base import Op
from . import init as initializers

_names = itertools.count(1)


class Mode:
    """Whether a model is training (dropout active) or evaluating; shared by its layers."""

    def __init__(self, training: bool = True):
        self.training = training


class Layer(abc.ABC):
    """Base: a name, the params it made, and `__call__(x) -> Node`."""

    kind = "layer"

    def __init__(self, name: str | None = None):
        self.name = name or f"{self.kind}{next(_names)}"
        self.params: dict[str, Node] = {}
        self.mode = Mode()

    def _param(self, x: Node, key: str, shape: tuple, init: Callable) -> Node:
        if key in self.params:
            p = self.params[key]
            if p.graph is not x.graph:
                raise GraphError(f"layer {self.name!r} was already built in graph {p.graph.name!r}")
            return p
        p = x.graph.param(f"{self.name}.{key}", shape=shape, init=init, dtype=x.dtype)
        self.params[key] = p
        return p

    @abc.abstractmethod
    def __call__(self, x: Node) -> Node:
        """Build the layer's vertices on `x` (making its params in x's graph the first time)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Linear(Layer):
    """x @ w + b, then an optional activation (a function such as vf.relu, or its name)."""

    kind = "linear"

    def __init__(self, in_features: int, out_features: int, activation: Callable | str | None = None,
                 bias: bool = True, init: Callable | None = None, seed: int | None = 0, name: str | None = None):
        super().__init__(name)
        self.in_features, self.out_features = in_features, out_features
        self.activation = _activation(activation)
        self.bias = bias
        self.init = init or initializers.glorot_uniform(seed=seed)

    def __call__(self, x: Node) -> Node:
        if x.shape[-1] not in (None, self.in_features):
            raise ShapeError(f"linear {self.name!r}: expects {self.in_features} features, got input of shape {x.shape}")
        w = self._param(x, "w", (self.in_features, self.out_features), self.init)
        h = ops.matmul(x, w)
        if self.bias:
            h = ops.add(h, self._param(x, "b", (self.out_features,), initializers.zeros()))
        return self.activation(h) if self.activation else h


class Conv2d(Layer):
    """2-D convolution over NCHW images with a per-channel bias."""

    kind = "conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple, stride=1, padding=0,
                 dilation=1, activation: Callable | str | None = None, bias: bool = True,
                 init: Callable | None = None, seed: int | None = 0, name: str | None = None):
        super().__init__(name)
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.shape = (out_channels, in_channels, *k)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = _activation(activation)
        self.bias = bias
        self.init = init or initializers.he_normal(seed=seed)

    def __call__(self, x: Node) -> Node:
        w = self._param(x, "w", self.shape, self.init)
        h = ops.conv2d(x, w, stride=self.stride, padding=self.padding, dilation=self.dilation)
        if self.bias:
            b = self._param(x, "b", (self.shape[0],), initializers.zeros())
            h = ops.add(h, ops.reshape(b, (self.shape[0], 1, 1)))
        return self.activation(h) if self.activation else h


class MaxPool2d(Layer):
    kind = "maxpool"

    def __init__(self, kernel_size, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def __call__(self, x: Node) -> Node:
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class Flatten(Layer):
    """(N, ...) -> (N, everything else)."""

    kind = "flatten"

    def __call__(self, x: Node) -> Node:
        rest = x.shape[1:]
        if None in rest:
            raise ShapeError(f"flatten {self.name!r}: every dimension after the first must be known, got {x.shape}")
        return ops.reshape(x, (-1, math.prod(rest)))


class Activation(Layer):
    kind = "activation"

    def __init__(self, fn: Callable | str, name: str | None = None):
        super().__init__(name)
        self.fn = _activation(fn)

    def __call__(self, x: Node) -> Node:
        return self.fn(x)


class DropoutMask(Op):
    """A fresh mask of kept units, scaled by 1 / (1 - rate), drawn at every run; ones when evaluating.

    The draws come from one seeded generator, one per forward call, so every
    executor sees the same sequence of masks.
    """

    name = "dropout_mask"

    def __init__(self, rate: float, seed: int | None, mode: Mode):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.mode = mode
        self._rng = np.random.default_rng(seed)

    def infer(self, x: Spec) -> Spec:
        return x

    def forward(self, xp, x):
        if not self.mode.training or self.rate == 0.0:
            return xp.ones_like(x)
        keep = self._rng.random(x.shape) >= self.rate
        return xp.asarray(keep, dtype=x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))

    def vjp(self, F, g, xs, y):
        return (None,)


class Dropout(Layer):
    kind = "dropout"

    def __init__(self, rate: float = 0.5, seed: int | None = 0, name: str | None = None):
        super().__init__(name)
        self.rate, self.seed = rate, seed

    def __call__(self, x: Node) -> Node:
        mask = DropoutMask(self.rate, self.seed, self.mode)(x, name=f"{self.name}.mask")
        return ops.multiply(x, mask, name=f"{self.name}.out")


class Sequential(Layer):
    """Layers applied in order; params gathered from all of them; one mode for all."""

    kind = "sequential"

    def __init__(self, *layers: Layer, name: str | None = None):
        super().__init__(name)
        self.layers = list(layers)
        for layer in self._all():
            layer.mode = self.mode

    def _all(self) -> Iterable[Layer]:
        for layer in self.layers:
            yield layer
            if isinstance(layer, Sequential):
                yield from layer._all()

    def __call__(self, x: Node) -> Node:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Node]:
        out: list[Node] = []
        for layer in self._all():
            out.extend(p for p in layer.params.values() if all(p is not q for q in out))
        return out

    def train(self) -> Sequential:
        self.mode.training = True
        return self

    def eval(self) -> Sequential:
        self.mode.training = False
        return self


def _activation(fn: Callable | str | None) -> Callable | None:
    if fn is None or callable(fn):
        return fn
    table = {"relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh, "softmax": ops.softmax,
             "log_softmax": ops.log_softmax, "leaky_relu": ops.leaky_relu}
    try:
        return table[fn]
    except KeyError:
        raise ValueError(f"unknown activation {fn!r}; use one of {', '.join(sorted(table))} or a function") from None
