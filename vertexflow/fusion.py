"""Elementwise fusion: a group of elementwise vertices computed in one pass, where that is measured faster.

numpy runs `x * 0.5 * (1 + y) + b` as four passes, each with a temporary;
a fused kernel reads each input once and writes one output. `fuse=True` on
an executor (numba, the optional extra `fuse`, compiles the kernels) finds,
for each set of fed shapes, the groups of elementwise vertices whose
intermediate values nobody else needs (not fetched, not read outside the
group, not kept for the reverse sweep), and keeps a group fused only where
its kernel was measured faster than numpy's passes on those shapes: numpy's
SIMD tanh and exp beat a scalar loop, so a chain of them stays numpy's,
while bias, scale, residual and ReLU chains fuse. Decisions are kept per
process, so every executor of a process runs the same kernels: their
results stay bitwise equal to each other, and equal to the unfused graph's
to rounding.

The pieces: `find_groups` (which vertices a group holds, from the order, the
concrete specs and what must stay), `FusedOp` (an op over the group's outer
inputs whose kernel is generated from the members' templates), and
`plan_fusion` (groups, measured, kept or not).
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MissingExtraError
from .graph import Node, Spec
from .ops import elementwise as ew
from .ops.base import Op

# How each elementwise op reads as a scalar expression of its arguments. Transcendental ops
# (exp, log, tanh, sigmoid, sqrt) are left out on purpose: numpy's SIMD loops for them beat a
# compiled scalar loop calling libm, so a group stops at them and they stay numpy's. erf has no
# SIMD loop to lose (scipy's is a scalar loop too), so it fuses: an exported GELU is one pass.
TEMPLATES: dict[type, str] = {
    ew.Erf: "math.erf({0})",
    ew.Add: "({0} + {1})",
    ew.Subtract: "({0} - {1})",
    ew.Multiply: "({0} * {1})",
    ew.Divide: "({0} / {1})",
    ew.Negative: "(-{0})",
    ew.Abs: "abs({0})",
    ew.Relu: "({0} if not ({0} <= 0.0) else 0.0)",
    ew.Maximum: "({0} if ({0} >= {1} or {0} != {0}) else {1})",
    ew.Minimum: "({0} if ({0} <= {1} or {0} != {0}) else {1})",
    ew.Where: "({1} if {0} else {2})",
    ew.Greater: "({0} > {1})",
    ew.Less: "({0} < {1})",
    ew.GreaterEqual: "({0} >= {1})",
    ew.LessEqual: "({0} <= {1})",
}
MIN_ELEMENTS = 4096  # below this, a kernel call costs more than the passes it saves


def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise MissingExtraError("fuse=True needs numba, which compiles the fused kernels: "
                                "pip install numba (or the extra: pip install -e '.[fuse]')")


@dataclass(frozen=True)
class Group:
    """Elementwise vertices computed as one: `root` is the value that leaves the group.

    Attributes:
        members: the vertices, in topological order, root last.
        inputs: the outer values the group reads, in the order the kernel takes them.
    """

    root: Node
    members: tuple[Node, ...]
    inputs: tuple[Node, ...]

    def expression(self) -> str:
        """The kernel's body: one line a member, each reading the outer inputs a0, a1, ... or earlier lines."""
        names = {n.id: f"a{i}" for i, n in enumerate(self.inputs)}
        lines = []
        for k, m in enumerate(self.members):
            args = [names[i.id] for i in m.inputs]
            names[m.id] = f"t{k}"
            lines.append(f"t{k} = {TEMPLATES[type(m.op)].format(*args)}")
        return "; ".join(lines)

    def signature(self, specs: Mapping[int, Spec]) -> tuple:
        return (self.expression(), tuple((str(specs[i.id].dtype), specs[i.id].shape) for i in self.inputs),
                str(specs[self.root.id].dtype), specs[self.root.id].shape)


def fusable(node: Node, specs: Mapping[int, Spec]) -> bool:
    if node.kind != "op" or type(node.op) not in TEMPLATES:
        return False
    spec = specs.get(node.id)
    return spec is not None and spec.static and spec.dtype.kind in "fb"


def find_groups(order: Sequence[Node], specs: Mapping[int, Spec], keep: Iterable[int]) -> list[Group]:
    """The groups of two or more fusable vertices whose inner values nobody outside needs.

    A group grows from a fusable root (a value that leaves it: fetched, kept, or read by a
    vertex that is not fused with it) back through its producers that are fusable, have
    every consumer inside the group, are not kept (fetched, or needed by the reverse
    sweep), and of at least MIN_ELEMENTS elements. Deterministic: the same graph, specs
    and kept values give the same groups.
    """
    keep = set(keep)
    ids = {n.id for n in order}
    consumers: dict[int, list[Node]] = {n.id: [] for n in order}
    for n in order:
        for i in n.inputs:
            if i.id in consumers and all(c is not n for c in consumers[i.id]):
                consumers[i.id].append(n)
    grouped: set[int] = set()
    groups = []
    for root in reversed(order):
        if root.id in grouped or not fusable(root, specs) or math.prod(specs[root.id].shape) < MIN_ELEMENTS:
            continue
        members = {root.id: root}
        frontier = [root]
        while frontier:
            node = frontier.pop()
            for producer in node.inputs:
                if producer.id in members or producer.id in grouped or producer.id in keep or producer.id not in ids:
                    continue
                if not fusable(producer, specs) or specs[producer.id].shape != specs[root.id].shape:
                    continue
                if all(c.id in members for c in consumers[producer.id]):
                    members[producer.id] = producer
                    frontier.append(producer)
        if len(members) < 2:
            continue
        ordered = tuple(sorted(members.values(), key=lambda n: n.id))
        inputs = tuple(dict.fromkeys(i for m in ordered for i in m.inputs if i.id not in members))
        groups.append(Group(root, ordered, inputs))
        grouped.update(members)
    return sorted(groups, key=lambda g: g.root.id)


_kernels: dict[tuple, object] = {}
_decisions: dict[tuple, bool] = {}
_lock = threading.Lock()
_counter = itertools.count()


def _kernel(expression: str, input_types: Sequence[str], output_type: str):
    """A numba ufunc computing `expression` of a0, a1, ... (compiled once per signature)."""
    key = (expression, tuple(input_types), output_type)
    with _lock:
        kernel = _kernels.get(key)
        if kernel is None:
            import numba

            names = [f"a{i}" for i in range(len(input_types))]
            body = "".join(f"    {line}\n" for line in expression.split("; "))
            last = expression.split("; ")[-1].split(" = ")[0]
            source = f"def fused({', '.join(names)}):\n{body}    return {last}\n"
            scope: dict = {"math": math}
            exec(compile(source, f"<vertexflow fused kernel {next(_counter)}>", "exec"), scope)  # noqa: S102
            types = [_numba_type(t) for t in input_types]
            signature = f"{_numba_type(output_type)}({', '.join(types)})"
            kernel = _kernels[key] = numba.vectorize([signature], nopython=True)(scope["fused"])
        return kernel


def _numba_type(dtype: str) -> str:
    return {"bool": "boolean"}.get(dtype, dtype)


class FusedOp(Op):
    """The members of a fused group as one op over the group's outer inputs."""

    name = "fused"
    writes_out = True
    inplace = True  # elementwise (the executors never hand a fused group its own input as out=)

    def __init__(self, group: Group, specs: Mapping[int, Spec]):
        self.group = group
        self.expression = group.expression()
        self.input_types = [str(specs[i.id].dtype) for i in group.inputs]
        self.output_spec = specs[group.root.id]
        self._kernel = None

    @property
    def kernel(self):
        """The compiled kernel (compiled at first use, once per process for each signature)."""
        if self._kernel is None:
            self._kernel = _kernel(self.expression, self.input_types, str(self.output_spec.dtype))
        return self._kernel

    def infer(self, *specs: Spec) -> Spec:
        return self.output_spec

    def forward(self, xp, *xs, out=None):
        return self.kernel(*xs, out=out) if out is not None else self.kernel(*xs)

    def cost(self, *specs: Spec) -> float:
        return float(sum(math.prod(1 if d is None else d for d in s.shape) for s in specs))

    def unfused(self, xp, *xs):
        """The members' own forwards, one pass each (what fusing is measured against)."""
        values = {i.id: x for i, x in zip(self.group.inputs, xs)}
        for m in self.group.members:
            values[m.id] = m.op.forward(xp, *(values[i.id] for i in m.inputs))
        return values[self.group.root.id]

    def __repr__(self) -> str:
        return f"FusedOp({self.expression})"


def _sample(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    if spec.dtype.kind == "b":
        return rng.random(spec.shape) < 0.5
    return (rng.random(spec.shape) + 0.5).astype(spec.dtype)  # positive: log and sqrt stay real


def decide(op: FusedOp, specs: Mapping[int, Spec]) -> bool:
    """Whether the fused kernel beats numpy's passes on these shapes (measured once per process)."""
    key = op.group.signature(specs)
    with _lock:
        known = _decisions.get(key)
    if known is not None:
        return known
    rng = np.random.default_rng(0)
    xs = [_sample(specs[i.id], rng) for i in op.group.inputs]
    out = np.empty(op.output_spec.shape, op.output_spec.dtype)
    with np.errstate(all="ignore"):
        fused = _time(lambda: op.forward(np, *xs, out=out))
        unfused = _time(lambda: op.unfused(np, *xs))
    verdict = fused < 0.9 * unfused
    with _lock:
        _decisions.setdefault(key, verdict)
        return _decisions[key]


def _time(fn, runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class FusionPlan:
    """The groups kept fused: {root id: its FusedOp}, and the ids of the inner vertices not run."""

    ops: dict[int, FusedOp]
    skipped: frozenset[int]

    @classmethod
    def none(cls) -> FusionPlan:
        return cls({}, frozenset())

    def only(self, keep: Callable[[Any], bool]) -> FusionPlan:
        """The plan with only the groups whose op `keep` accepts."""
        ops = {root: op for root, op in self.ops.items() if keep(op)}
        return FusionPlan(ops, frozenset(m.id for op in ops.values() for m in op.group.members if m is not op.group.root))


def plan_fusion(order: Sequence[Node], specs: Mapping[int, Spec], keep: Iterable[int]) -> FusionPlan:
    """The groups of `order` worth fusing for these specs (each measured, the verdict kept per process)."""
    ops: dict[int, FusedOp] = {}
    skipped: set[int] = set()
    for group in find_groups(order, specs, keep):
        op = FusedOp(group, specs)
        if decide(op, specs):
            ops[group.root.id] = op
            skipped.update(m.id for m in group.members if m is not group.root)
    return FusionPlan(ops, frozenset(skipped))
