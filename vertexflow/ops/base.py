"""The `Op` interface every operation implements, and the rules ops share.

An op is a small class with four parts side by side: `infer` (the shape and
dtype rule, run when a vertex is built), `forward` (the value, on an array
module `xp` that is numpy or cupy), `vjp` (the one derivative rule, written
against a math namespace `F` that works on arrays or on graph vertices) and
`cost` (an estimate of the work, in flops, used to decide where it runs).

Calling an op instance on nodes (or Python scalars, or arrays) adds a vertex.
"""

from __future__ import annotations

import abc
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import GraphError, ShapeError
from ..graph import Node, Spec, format_shape

FLOAT_KINDS = "f"
NUMERIC_KINDS = "fiu"


class Op(abc.ABC):
    """Base class of every operation, built-in or user-defined.

    Subclasses set `name` and implement `infer` and `forward`; differentiable
    ops implement `vjp`, returning one gradient per input (None where no
    gradient flows, e.g. integer labels or boolean masks).
    """

    name: str = "op"
    # True for ops whose forward calls BLAS, which threads by itself: executors must not
    # run two of them at once on the same cores with all of BLAS's threads each.
    blas: bool = False
    # True for ops whose forward takes `out=`, an array of the inferred shape and dtype
    # to write the result into (and return): executors then hand it a reused buffer.
    writes_out: bool = False
    # True for an op with `writes_out` whose forward may still return a view of its input (a reshape
    # writes into out= only where it must copy): executors never treat its value as an array of its own.
    views: bool = False
    # True for elementwise ops whose forward may be given one of its inputs as `out=` (same
    # shape and dtype as the output): the compiled tape then writes in place, as numpy's
    # temporary elision does, where nothing else reads that input.
    inplace: bool = False
    # The name of the array module's function that computes the op as it is (np.add for Add):
    # the compiled tape calls it directly instead of `forward`.
    ufunc: str = ""
    # True for an op whose forward may wait on something outside the graph (a lock, a socket, a
    # barrier another vertex also waits at): it always gets a worker thread of its own, and a graph
    # holding one always runs as a network, never one vertex after another. An op whose `forward`
    # is `async def` waits holding no thread: its actor awaits it (see `waits`).
    blocking: bool = False
    # Whether `vjp` reads the values of the inputs, and of the output, beyond their shapes and dtypes
    # (an add's rule reads neither, relu's its output only, a product's its inputs only). The compiled
    # training step lets an elementwise vertex write in place over a value no derivative rule reads,
    # as it does in a forward step (see tape.inplace_targets); left True, nothing is overwritten.
    vjp_reads_inputs: bool = True
    vjp_reads_output: bool = True
    # True where every gradient `vjp` returns is an array it computed, or g itself or a view of g, never
    # an input's or the output's array: a gradient made so from the seed is handed out without the
    # check that it shares no memory with a feed or a param.
    vjp_fresh: bool = False
    # True for an op without `writes_out` whose forward still always returns an array it made (a loss):
    # its value is handed out without that check either.
    fresh_output: bool = False

    @abc.abstractmethod
    def infer(self, *specs: Spec) -> Spec:
        """The Spec of the output given the inputs' specs; raise ShapeError if they do not fit."""

    @abc.abstractmethod
    def forward(self, xp, *xs):
        """The output array from the input arrays, computed with array module `xp`.

        An op with `writes_out = True` also takes `out=`: None, or an array of
        the shape and dtype `infer` gave, which it fills and returns (or returns a view of its
        memory in another order: a product computed transposed hands on its value column-major).
        """

    def vjp(self, F, g, xs, y) -> tuple:
        """Vector-Jacobian product: gradients for each input given the output's gradient `g`.

        Args:
            F: math namespace (arrays at run time, vertices in `vf.grad`).
               `F.needs_input_grad[i]` says whether input i's gradient is used.
            g: gradient of the output.
            xs: the inputs (arrays or vertices).
            y: the output.

        Returns:
            One entry per input: its gradient, or None for no gradient.
        """
        raise GraphError(f"op {self.name!r} has no derivative rule, so it cannot be differentiated")

    def bind(self, xp, specs: tuple[Spec, ...], out: Spec):
        """`forward` bound for inputs of these concrete specs (giving `out`): what the compiled tape calls.

        Called as bound(*arrays), or bound(*arrays, out=array) for an op that writes out.
        The default is `forward` itself; an op may return a function chosen for the shapes
        (a convolution's algorithm), which must give the same values as `forward`.
        """
        if self.ufunc and type(self).__module__.startswith("vertexflow."):
            return getattr(xp, self.ufunc)
        return functools.partial(self.forward, xp)

    def bind_vjp(self, xp, needs: tuple[bool, ...], specs: tuple[Spec, ...], out: Spec):
        """The derivative rule bound for inputs of these concrete specs (giving `out`): what the compiled
        reverse sweep calls, as bound(g, *inputs, output) -> one gradient per input, None where `needs`
        asks for none.

        The default, None, has the sweep call `vjp` on arrays. An op may bind its rule where vjp's
        dispatch (a Python call per array op, about a microsecond each) shows beside the arithmetic; the
        bound rule must give vjp's bits, which the executors that call vjp give.
        """
        return None

    def cost(self, *specs: Spec) -> float:
        """Estimated flops; by default one per input element."""
        return float(sum(numel(s) for s in specs))

    def __repr__(self) -> str:
        attrs = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        inner = ", ".join(f"{k}={v!r}" for k, v in attrs.items())
        return f"{type(self).__name__}({inner})"

    def __call__(self, *args: Any, name: str | None = None, role: str | None = None) -> Node:
        """Add a vertex applying this op to `args` (nodes, Python scalars or arrays)."""
        nodes = as_nodes(args, self.name)
        return nodes[0].graph.add_vertex(self, nodes, name=name, role=role)


def is_async(op: Op) -> bool:
    """Whether the op's forward is a coroutine function (awaited by its actor, no thread held)."""
    return inspect.iscoroutinefunction(op.forward)


def derivative_is_async(op: Op) -> bool:
    """Whether the op's derivative rule is a coroutine function."""
    return inspect.iscoroutinefunction(op.vjp)


def waits(op: Op) -> bool:
    """Whether the op says it may wait on something outside the graph: `blocking`, or async."""
    return bool(op.blocking) or is_async(op) or derivative_is_async(op)


def says_whether_it_waits(op: Op) -> bool:
    """Whether we know if the op may wait: built-in ops never do; a user op knows when its class sets
    `blocking` itself (True or False) or is async. Others may wait at something we cannot see."""
    if type(op).__module__.startswith("vertexflow.") or waits(op):
        return True
    return any("blocking" in vars(cls) for cls in type(op).__mro__ if cls is not Op and issubclass(cls, Op))


def as_nodes(args: Sequence[Any], op_name: str) -> tuple[Node, ...]:
    """Turn op arguments into nodes of one graph: scalars and arrays become constants.

    A Python scalar takes the dtype it would have in numpy next to the node
    arguments (so `x * 2` stays float32 when x is float32), and so does a list or
    tuple of Python numbers (`x + [1, 2, 3]` stays float32: numpy would make the list
    float64 and the sum with it). numpy arrays and scalars keep their own dtype, as
    in numpy.
    """
    graphs = {id(a.graph): a.graph for a in args if isinstance(a, Node)}
    if not graphs:
        raise GraphError(f"{op_name}: at least one argument must be a vertex of a graph")
    if len(graphs) > 1:
        names = sorted(g.name for g in graphs.values())
        raise GraphError(f"{op_name}: arguments come from different graphs ({', '.join(map(repr, names))})")
    graph = next(iter(graphs.values()))
    node_dtypes = [a.dtype for a in args if isinstance(a, Node)]
    out = []
    for a in args:
        if isinstance(a, Node):
            out.append(a)
        elif isinstance(a, (bool, int, float)):
            out.append(graph.scalar(a, scalar_dtype(node_dtypes, a)))
        elif isinstance(a, (list, tuple)):
            out.append(graph.const(a, dtype=_weak_sequence_dtype(node_dtypes, a)))
        elif isinstance(a, (np.ndarray, np.generic)):
            out.append(graph.const(a))
        else:
            raise GraphError(f"{op_name}: cannot use a {type(a).__name__} as an argument")
    return tuple(out)


def _weak_sequence_dtype(dtypes: Sequence[np.dtype], value: Sequence) -> np.dtype | None:
    """A nested list of Python numbers next to vertices: the dtype its largest scalar would take."""
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind not in "biuf" or not dtypes or array.size == 0:
        return None
    kind_rank = {"b": 0, "u": 1, "i": 1, "f": 2}
    if kind_rank[array.dtype.kind] > max(kind_rank.get(d.kind, 3) for d in dtypes):
        return None  # floats next to integer vertices: numpy's promotion (a float result)
    return np.result_type(*dtypes, array.flat[0].item())


def scalar_dtype(dtypes: Sequence[np.dtype], value: Any) -> np.dtype:
    """The dtype a Python scalar takes beside arrays of `dtypes` (numpy's weak scalar rule)."""
    if not dtypes:
        return np.asarray(value).dtype
    return np.result_type(*dtypes, value)


def numel(spec: Spec) -> int:
    """Elements in a spec, counting unknown sizes as 1."""
    return math.prod(1 if d is None else d for d in spec.shape)


def broadcast_shapes(*shapes) -> tuple:
    """Numpy broadcasting over shapes that may hold None (a size known only at run time)."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        dims = [s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError("cannot broadcast " + " and ".join(format_shape(s) for s in shapes))
        if known:
            out.append(known.pop())
        elif None in dims:
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def require_float(*specs: Spec) -> None:
    for spec in specs:
        if spec.dtype.kind not in FLOAT_KINDS:
            raise ShapeError(f"needs floating-point inputs, got {spec.dtype}")


def require_numeric(*specs: Spec) -> None:
    for spec in specs:
        if spec.dtype.kind not in NUMERIC_KINDS:
            raise ShapeError(f"needs numeric inputs, got {spec.dtype}")


def normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    """Axes as a sorted tuple of non-negative ints; None means all."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for {ndim} dimensions")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def summing_to(xp, given: tuple[int, ...], shape: tuple[int, ...]) -> Callable | None:
    """ArrayMath.sum_to from an array of shape `given` to `shape`, chosen ahead as a call (a bound
    derivative rule's): None where the shapes are equal (the array itself)."""
    if given == shape:
        return None
    if len(given) == 2 and len(shape) == 1 and given[1] == shape[0]:
        # a bias's gradient: the reduction sum_to_shape makes, without its reshape (for numpy, the
        # ufunc's own reduce that ndarray.sum calls, without its Python frame)
        return functools.partial(np.add.reduce, axis=0) if xp is np else _sum_rows
    return functools.partial(sum_to_shape, xp, shape=shape)


def _sum_rows(x):
    return x.sum(axis=0)


def sum_to(xp, x, shape: tuple[int, ...]):
    """x summed to `shape` as a derivative rule sums a broadcast gradient (`summing_to`'s choice)."""
    reduce = summing_to(xp, x.shape, shape)
    return x if reduce is None else reduce(x)


def sum_to_shape(xp, x, shape: tuple[int, ...]):
    """Sum a broadcast array back to `shape`: the one helper every broadcasting gradient uses."""
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and x.shape[i + lead] != 1
    )
    if axes:
        x = x.sum(axis=axes, keepdims=True)
    return x.reshape(shape)
