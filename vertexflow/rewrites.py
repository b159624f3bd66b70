"""Rewrites every executor applies before it runs a step: small, named patterns computed in fewer passes.

As onnxruntime's graph transformers do (gemm_activation_fusion,
bias_gelu_fusion), each rewrite is a pattern over the vertices a step runs and
an op that computes the pattern's value in fewer passes. A pattern applies only
where its inner values are needed by nobody else: not fetched, not read outside
it, not kept for the reverse sweep. The result is a `fusion.FusionPlan` (each
group's root runs the group's op on the group's outer inputs; its inner
vertices do not run), so every executor runs a rewrite the way it runs a fused
group.

A rewrite never changes a value: its op makes the same float operations in
the same order as the vertices it replaces (only the passes over memory and
the temporaries go), so an executor with rewrites gives the same bits as one
without, and executors that apply them and executors that do not can be
compared bit for bit. `optimize=False` on an executor turns them off.

The rewrites:

- `product_epilogue`: a matrix product or convolution (a transposed one whose tiles
  lie apart too), then a bias added
  along one axis, then an activation (relu, clip, hard sigmoid, hard swish,
  GELU, sigmoid, tanh), or any two of them: one op that writes the product and
  runs the epilogue on it in place, in one pass (`kernels/epilogue.py`). Identity
  vertices between them (an imported model's names for its values) are passed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .fusion import FusionPlan, Group
from .graph import Node, Spec
from .kernels import epilogue as ep
from .kernels import products
from .ops import activation
from .ops import elementwise as ew
from .ops.base import Op, numel
from .ops.linalg import Matmul
from .ops.nn import Conv2d, ConvTranspose2d
from .ops.shape import ExpandDims, Identity, Reshape, Squeeze

_SHAPE_ONLY = (Squeeze, ExpandDims, Reshape)


@dataclass(frozen=True)
class Activation:
    """An activation op in an epilogue: on the CPU a kernel code and its two parameters, or (code NONE)
    the op's own forward after the bias pass; on a GPU always the op's own forward."""

    op: Op
    code: int = ep.NONE
    p0: float = 0.0
    p1: float = 0.0
    # (numpy's SIMD transcendental loops, sigmoid and tanh, and float64's GELU stay the op's own forward)

    def after(self, xp, value):
        """The op's own forward on the bias pass's value (in place where the op allows it)."""
        return self.op.forward(xp, value, out=value) if self.op.inplace else self.op.forward(xp, value)


def _activation(op: Op, dtype: np.dtype) -> Activation | None:
    kind = type(op)
    if kind is ew.Relu:
        return Activation(op, ep.CLIP, 0.0, float("inf"))
    if kind is ew.Clip:
        return Activation(op, ep.CLIP, op.low, op.high)
    if kind is activation.HardSigmoid:
        return Activation(op, ep.HARD_SIGMOID, op.alpha, op.beta)
    if kind is activation.HardSwish:
        return Activation(op, ep.HARD_SWISH, op.alpha, op.beta)
    if kind is activation.Gelu:
        # float32's in the bias pass, as its own kernel computes it; otherwise its passes
        return Activation(op, ep.GELU) if dtype == np.float32 else Activation(op)
    if kind in (ew.Sigmoid, ew.Tanh):
        return Activation(op)
    return None


# Above this many bytes, a product's output is no longer in cache when a pass after it reads it
# (MobileNet's 9 MB activations at batch 64; at batch 8 a run of images at a time was 5-8% slower).
_IN_CACHE = 2 * 1024 * 1024


class ProductEpilogue(Op):
    """A product (matmul or conv2d) with its bias and activation applied in place, in one pass."""

    name = "product_epilogue"
    blas = True
    writes_out = True

    def __init__(self, group: Group, product: Op, bias_axis: int | None, act: Activation | None, spec: Spec,
                 product_shape: tuple | None = None):
        self.group = group
        self.product = product
        self.bias_axis = bias_axis
        self.act = act
        self.output_spec = spec
        # the product's own shape, where shape-only vertices (an imported Conv1d's squeeze) lie between
        # it and the activation: the epilogue runs on it, the result is its view in the group's shape
        self.product_shape = spec.shape if product_shape is None else product_shape
        # decided once (a call at batch 1 is a few microseconds of Python per vertex)
        self._code = ep.NONE if act is None else act.code
        self._params = (0.0, 0.0) if act is None else (act.p0, act.p1)
        self._after = None if act is None or act.code != ep.NONE else act.after
        # a convolution's output larger than the cache gets its epilogue on each run of images as soon
        # as they are done, by the thread that computed them, while they are in cache (one that fits
        # in cache whole is cheaper in one pass after: a call per run costs more there)
        self._by_images = type(product) is Conv2d and spec.dtype.itemsize * numel(spec) > _IN_CACHE
        self._bound = None  # the epilogue pass for the product's shape (kernels/epilogue.py `bound`)

    def infer(self, *specs: Spec) -> Spec:
        return self.output_spec

    def forward(self, xp, a, w, *bias, out=None):
        if self.product_shape != self.output_spec.shape:
            if out is not None:
                out = out.reshape(self.product_shape)  # a pool buffer: row-major, so a view
            return self._forward(xp, a, w, bias, out).reshape(self.output_spec.shape)
        return self._forward(xp, a, w, bias, out)

    def _forward(self, xp, a, w, bias, out):
        if xp is not np:  # cupy: the vertices' own forwards
            value = self.product.forward(xp, a, w, out=out)
            if bias:
                xp.add(value, bias[0], out=value)
            return value if self.act is None else self.act.after(xp, value)
        b = bias[0] if bias else None
        if self._in_small_product(a, w, b, out):
            value = products.times_transposed(a, w.T, out, None if b is None else b.reshape(-1), self._code,
                                              *self._params)
            return value if self._after is None else self._after(xp, value)
        if self._in_conv_kernel(a, w, b):
            value = self.product.forward(xp, a, w, out=out, epilogue=(b, self._code, *self._params))
            return value if self._after is None else self._after(xp, value)
        if self._by_images:
            return self.product.forward(xp, a, w, out=out, then=functools.partial(self._in_place, xp, b))
        return self._epilogue(xp, b, self.product.forward(xp, a, w, out=out))

    def _in_small_product(self, a, w, b, out) -> bool:
        """Whether the product is one of a few rows by a transposed matrix (`kernels/products.py`), which
        runs the epilogue itself (a bias along the last axis, an activation with a kernel code; numpy's
        sigmoid and tanh after it)."""
        return (type(self.product) is Matmul and w.ndim == 2 and products.takes(a, w.T, out)
                and (b is None or (self.bias_axis == 1 and b.dtype == a.dtype and b.size == w.shape[1]
                                   and b.flags.c_contiguous)))

    def _in_conv_kernel(self, a, w, b) -> bool:
        """Whether the product is a convolution whose kernel runs the epilogue on each image or plane it
        stores (the direct and the depthwise ones: `Conv2d.runs_epilogue`), a bias along the channels."""
        return (type(self.product) in (Conv2d, ConvTranspose2d)
                and self.product.runs_epilogue(np, a.shape, w.shape, a.dtype)
                and (b is None or (self.bias_axis == 1 and b.dtype == a.dtype and b.size == w.shape[0])))

    def _epilogue(self, xp, b, value):
        if self._bound is None:  # at the first call (the kernels compile then)
            self._bound = ep.bound(self.product_shape, self.output_spec.dtype, self.bias_axis or 0, self._code,
                                   *self._params)
        value = self._bound(value, b)
        return value if self._after is None else self._after(xp, value)

    def _in_place(self, xp, b, images):
        done = self._epilogue(xp, b, images)
        if done is not images:  # an activation that does not run in place (float64's GELU)
            xp.copyto(images, done)

    def cost(self, *specs: Spec) -> float:
        return self.product.cost(*specs[:2]) + float(numel(self.output_spec))

    def __repr__(self) -> str:
        parts = [self.product.name] + (["bias"] if self.bias_axis is not None else []) + (
            [self.group.members[-1].op_name] if self.act is not None else [])
        return f"ProductEpilogue({' + '.join(parts)})"


def _bias_axis(bias: Spec, out: Spec) -> int | None:
    """The one axis a bias of this shape is added along (broadcast on every other), or None."""
    if bias.ndim > out.ndim or bias.dtype != out.dtype:
        return None
    shape = (1,) * (out.ndim - bias.ndim) + tuple(bias.shape)
    axes = [k for k, d in enumerate(shape) if d != 1]
    if len(axes) > 1:
        return None
    if not axes:
        return None  # a scalar: numpy's add of a 0-d value, not worth a rewrite of its own
    axis = axes[0]
    return axis if shape[axis] == out.shape[axis] else None


def product_epilogue(order: Sequence[Node], specs: Mapping[int, Spec], keep: Iterable[int]) -> list[ProductEpilogue]:
    """The epilogue groups of `order`: product, then bias and/or activation, their inner values needed by nobody else."""
    keep = set(keep)
    consumers: dict[int, list[Node]] = {n.id: [] for n in order}
    for n in order:
        for i in n.inputs:
            if i.id in consumers:
                consumers[i.id].append(n)

    def sole(node: Node) -> tuple[Node | None, list[Node]]:
        """The one consumer of node, if node's value is an inner value nobody else needs, seen through
        identity vertices (an imported model names values with them); and the identities passed."""
        passed: list[Node] = []
        while True:
            users = consumers.get(node.id, [])
            if node.id in keep or len(users) != 1:
                return None, []
            if type(users[0].op) is not Identity:
                return users[0], passed
            node = users[0]
            passed.append(node)

    found = []
    for node in order:
        if node.kind != "op" or type(node.op) not in (Matmul, Conv2d, ConvTranspose2d):
            continue
        spec = specs.get(node.id)
        if spec is None or not spec.static or spec.dtype.kind != "f" or spec.ndim < 1:
            continue
        if type(node.op) is ConvTranspose2d and not node.op.runs_epilogue(
                np, specs[node.inputs[0].id].shape, specs[node.inputs[1].id].shape, spec.dtype):
            continue  # (its other kernels take no epilogue)
        members, inputs = [node], list(node.inputs)
        bias_axis, act = None, None
        nxt, passed = sole(node)
        if nxt is not None and type(nxt.op) is ew.Add and specs[nxt.id] == spec:
            last = passed[-1] if passed else node
            other = nxt.inputs[1] if nxt.inputs[0] is last else nxt.inputs[0]
            axis = _bias_axis(specs[other.id], spec) if other is not last else None
            if axis is not None:
                members += [*passed, nxt]
                inputs.append(other)
                bias_axis = axis
                nxt, passed = sole(nxt)
        # a convolution's value may pass through vertices that only reshape it (an imported Conv1d is
        # expand_dims, conv2d, bias, squeeze) on its way to the activation
        shaped, shape = [], spec.shape
        while type(node.op) is Conv2d and nxt is not None and type(nxt.op) in _SHAPE_ONLY and \
                specs[nxt.id].static and specs[nxt.id].dtype == spec.dtype:
            shaped += [*passed, nxt]
            shape = specs[nxt.id].shape
            nxt, passed = sole(nxt)
        if nxt is not None and specs.get(nxt.id) == Spec(shape, spec.dtype):
            act = _activation(nxt.op, spec.dtype)
            if act is not None:
                members += [*shaped, *passed, nxt]
        if len(members) < 2:
            continue
        group = Group(members[-1], tuple(members), tuple(inputs))
        out_spec = specs[members[-1].id]
        found.append(ProductEpilogue(group, node.op, bias_axis, act, out_spec, spec.shape))
    return found


def plan_rewrites(order: Sequence[Node], specs: Mapping[int, Spec], keep: Iterable[int]) -> FusionPlan:
    """Every rewrite's groups for these specs, as a FusionPlan (no two groups share a vertex)."""
    ops: dict[int, Op] = {}
    skipped: set[int] = set()
    for op in product_epilogue(order, specs, keep):
        members = {m.id for m in op.group.members}
        if members & skipped or any(m in ops for m in members):
            continue
        ops[op.group.root.id] = op
        skipped.update(m.id for m in op.group.members if m is not op.group.root)
    return FusionPlan(ops, frozenset(skipped))


def plan_step(order: Sequence[Node], specs: Mapping[int, Spec], keep: Iterable[int], *, optimize: bool,
              fuse: bool) -> FusionPlan:
    """What a step runs instead of single vertices: the rewrites (`optimize`), then, on the vertices they
    leave, the measured elementwise fusion (`fuse`, fusion.py)."""
    keep = set(keep)
    plan = plan_rewrites(order, specs, keep) if optimize else FusionPlan.none()
    if not fuse:
        return plan
    from .fusion import plan_fusion

    rest = [n for n in order if n.id not in plan.skipped and n.id not in plan.ops]
    fused = plan_fusion(rest, specs, keep)
    return FusionPlan({**plan.ops, **fused.ops}, plan.skipped | fused.skipped)
