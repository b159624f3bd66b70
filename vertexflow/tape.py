"""The compiled tape: the vertices a fetch needs, as straight-line Python compiled once per fed shape.

Two levels, as torch.fx keeps a graph and the Python code generated from it:

* a `Tape` (one per set of fetches, `compile_tape`): the vertices in topological
  order as instructions that read and write numbered slots, each slot let go
  after its last reader. `Tape.listing()` is what `seq.program(fetch)` prints.
* a `Program` (one per tape and set of fed shapes, `compile_program`): the tape
  as generated Python source, one line per vertex, for instance

      v7 = k7(v3, v5, out=take7())    # a kernel bound ahead, its output in a reused buffer
      v8 = k8(v7, v2, out=v7)          # an epilogue in place: nothing else reads v7
      del v3, v5

  Each kernel is bound once (`Op.bind`: the ufunc itself, a convolution
  chosen for the shape), output buffers and in-place targets are decided from
  the concrete specs, and a fused group is one line. A backward program goes
  on with the reverse sweep: each vertex's edge gradients summed in the plan's
  fixed order, then its derivative rule, every value let go after its last
  use. `Program.source` is the code, readable.

The generated code does the work and nothing else. Whatever watches a step
runs the same instructions one at a time through the execution core
(`core.VertexRunner`) instead: a tracer, `check_numerics`, and the first call
for each set of fed shapes, which checks every output against the spec its
op declared. Both give the same bits. A failure inside generated code is
traced back to its line, so it is raised as the core raises it (a
`VertexError` naming the vertex, its op and its input shapes); a call past
its deadline names the vertex running, read from the thread's frame.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .autodiff.namespace import ArrayMath
from .autodiff.reverse import ReversePlan
from .core import BACKWARD, FORWARD, _failed, last_reads
from .graph import Node, Spec
from .ops.shape import Identity

_counter = itertools.count()


@dataclass(frozen=True)
class Instruction:
    index: int
    node: Node
    args: tuple[int, ...]  # slots read
    out: int  # slot written
    free: tuple[int, ...]  # slots no later instruction reads


@dataclass(frozen=True)
class Tape:
    """A program of slots: load sources into slots, run instructions, read fetch slots."""

    loads: tuple[tuple[int, Node], ...]
    instructions: tuple[Instruction, ...]
    fetch_slots: tuple[int, ...]
    slot_of: dict[int, int]
    order: tuple[Node, ...]  # every vertex, sources first: what concrete specs are inferred over
    inputs: tuple[Node, ...]  # the inputs it needs fed
    kept: frozenset[int] = frozenset()  # ids of the values never let go (fetched, or for the reverse sweep)
    awaits: bool = False  # some vertex's forward or derivative is async: it runs one vertex at a time

    @functools.cached_property
    def _load_plan(self) -> tuple[tuple[int | None, Node], ...]:
        return tuple((node.id if node.kind == "input" else None, node) for _, node in self.loads)

    def stored_sources(self, fed: Mapping[int, Any]) -> list:
        """The arrays a call loads, in load order: the fed inputs' from `fed` ({input id: array}), the
        params' and constants' own stored arrays (what a CPU call loads)."""
        return [fed[i] if i is not None else node._value for i, node in self._load_plan]

    def listing(self) -> str:
        lines = []
        for slot, node in self.loads:
            lines.append(f"  load  {node.kind:<8} {node.name:<24} -> %{slot:<4} {node.spec}")
        for ins in self.instructions:
            args = ", ".join(f"%{a}" for a in ins.args)
            names = ", ".join(i.name for i in ins.node.inputs)
            lines.append(
                f"{ins.index:>5}  {ins.node.op_name:<16} {args:<16} -> %{ins.out:<4} "
                f"{ins.node.name:<24} {ins.node.spec}   # {names}"
            )
        lines.append("  fetch " + ", ".join(f"%{s}" for s in self.fetch_slots))
        return "\n".join(lines)


def compile_tape(targets: Sequence[Node], keep: Iterable[int] = ()) -> Tape:
    """The tape computing `targets`; slots of vertex ids in `keep` are never freed."""
    from .graph import ancestors

    order = ancestors(targets)
    slot_of = {n.id: i for i, n in enumerate(order)}
    loads = tuple((slot_of[n.id], n) for n in order if n.kind != "op")
    ops = [n for n in order if n.kind == "op"]
    pinned = {slot_of[t.id] for t in targets} | {slot_of[k] for k in keep if k in slot_of}
    frees = last_reads([[slot_of[i.id] for i in node.inputs] for node in ops], pinned)
    instructions = tuple(
        Instruction(index=i, node=node, args=tuple(slot_of[inp.id] for inp in node.inputs), out=slot_of[node.id],
                    free=frees[i])
        for i, node in enumerate(ops)
    )
    from .ops.base import derivative_is_async, is_async

    return Tape(loads, instructions, tuple(slot_of[t.id] for t in targets), slot_of,
                tuple(n for _, n in loads) + tuple(ops), tuple(n for _, n in loads if n.kind == "input"),
                frozenset(t.id for t in targets) | frozenset(k for k in keep if k in slot_of),
                any(is_async(n.op) or derivative_is_async(n.op) for n in ops))


def fused_instructions(tape: Tape, plan) -> tuple[tuple[Instruction, ...], dict]:
    """The tape's instructions with each fused group as one (reading the group's outer inputs).

    Returns:
        (instructions, {root id: FusedOp}); slots are let go after their new last readers.
    """
    kept = [ins for ins in tape.instructions if ins.node.id not in plan.skipped]
    reads = []
    for ins in kept:
        op = plan.ops.get(ins.node.id)
        reads.append([tape.slot_of[i.id] for i in op.group.inputs] if op is not None else list(ins.args))
    pinned = set(tape.fetch_slots) | {tape.slot_of[k] for k in tape.kept}
    frees = last_reads(reads, pinned)
    return tuple(
        Instruction(index=ins.index, node=ins.node, args=tuple(r), out=ins.out, free=f)
        for ins, r, f in zip(kept, reads, frees)
    ), plan.ops


# -- programs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """What one line of a program runs: a vertex's op (forward) or its derivative rule (backward).

    Attributes:
        args: the program's variable names the call reads, to name their shapes in an error.
    """

    node: Node
    phase: str
    args: tuple[str, ...]


class Program:
    """A tape compiled for one set of fed shapes: generated Python calling kernels bound ahead.

    Call it with the source values in the tape's load order; it returns the fetched
    values (and, for a backward program, the gradients of the plan's wrt vertices,
    None where none arrived).
    """

    def __init__(self, source: str, namespace: dict, sites: dict[int, Site], name: str):
        self.source = source
        self.sites = sites
        self.made: frozenset[int] = frozenset()  # wrt vertices whose gradients the sweep made (no alias)
        code = compile(source, name, "exec")
        exec(code, namespace)  # noqa: S102 - our own generated code
        self.function = namespace["program"]
        self.code = self.function.__code__
        _programs_by_code[self.code] = self

    def __call__(self, sources: Sequence[Any]):
        try:
            return self.function(*sources)
        except BaseException as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    def _error(self, exc: BaseException) -> BaseException:
        """The exception as the execution core reports it, naming the vertex whose line raised."""
        tb = exc.__traceback__
        frame, line = None, None
        while tb is not None:
            if tb.tb_frame.f_code is self.code:
                frame, line = tb.tb_frame, tb.tb_lineno
            tb = tb.tb_next
        site = self.sites.get(line) if line is not None else None
        if site is None:
            return exc
        values = frame.f_locals
        args = [values.get(name) for name in site.args]
        failure = _failed(site.node, args, exc, site.phase)
        return failure.error

    def running(self, frames: Mapping[int, Any], thread_id: int | None) -> Site | None:
        """The site a thread is running now (for a timeout's message), from its current frame."""
        frame = frames.get(thread_id) if thread_id is not None else None
        while frame is not None:
            if frame.f_code is self.code:
                return self.sites.get(frame.f_lineno)
            frame = frame.f_back
        return None


def running_site(program: Program, thread_id: int | None) -> Site | None:
    return program.running(sys._current_frames(), thread_id)


# Compiled code objects -> their programs, to say which vertex a thread is in (weak: programs come and go).
_programs_by_code: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def running_vertices() -> dict[str, str]:
    """{vertex: what it is doing} for every vertex some thread of this process is in now: a compiled
    program's line, or the execution core's call for a vertex (innermost first per thread). What a
    process that cannot be interrupted (a Ray partition past its deadline) can say of itself."""
    from .core import VertexRunner

    core_codes = {VertexRunner.forward.__code__: FORWARD, VertexRunner.derivative.__code__: BACKWARD}
    found: dict[str, str] = {}
    for frame in sys._current_frames().values():
        while frame is not None:
            phase = core_codes.get(frame.f_code)
            node = frame.f_locals.get("node") if phase is not None else None
            if node is None:
                program = _programs_by_code.get(frame.f_code)
                site = program.sites.get(frame.f_lineno) if program is not None else None
                if isinstance(site, tuple):  # a segment's sites are (entry index, site)
                    site = site[1]
                if site is not None:
                    node, phase = site.node, site.phase
            if node is not None:
                what = "its derivative" if phase == BACKWARD else f"its op {node.op_name}"
                found.setdefault(node.name, f"running {what} to return")
                break
            frame = frame.f_back
    return found


class _Writer:
    """Lines of a generated function, with the site each line runs."""

    def __init__(self):
        self.lines: list[str] = []
        self.sites: dict[int, Site] = {}

    def line(self, text: str, indent: int = 1, site: Site | None = None) -> None:
        self.lines.append("    " * indent + text)
        if site is not None:
            self.sites[len(self.lines)] = site  # line numbers start at 1


def owns_its_array(node: Node) -> bool:
    """Whether a vertex's value is an array of its own (fresh or a pool buffer), never a view of another's."""
    op = node.op
    return op.writes_out and not op.views and type(op).__module__.startswith("vertexflow.")


def passes_on(node: Node) -> bool:
    """Whether a vertex's value is its one input itself (an identity: an imported model names values
    with them), so it owns that array when it is the input's last reader."""
    return type(node.op) is Identity


def _taker(buffers, spec: Spec, op, args: Sequence[str]) -> tuple[Callable, str]:
    """The function a generated line calls for its output buffer, and the arguments it passes: an
    elementwise op's buffer is laid out as its inputs are (BufferPool.take_like)."""
    if op.inplace:
        return functools.partial(buffers.take_like, spec.shape, spec.dtype), ", ".join(args)
    return functools.partial(buffers.take, spec.shape, spec.dtype), ""


def inplace_targets(instructions: Sequence[Instruction], specs: Mapping[int, Spec], tape: Tape,
                    pooled: Mapping[int, Spec], fused: Mapping[int, Any] = {},  # noqa: B006
                    reverse: ReversePlan | None = None) -> dict[int, int]:
    """{instruction index: slot} for elementwise vertices that can write into an input's array.

    An input qualifies when it is an array of its own (made by an op that writes a fresh
    array or into a pool buffer, or written in place itself), this vertex is its last
    reader, nobody reads its values later (fetched, or read by a derivative rule of
    `reverse`), and it has the output's shape and dtype. numpy then computes into it as its
    temporary elision does. A value the reverse sweep reads only the shape of (an add's
    output, for the add's rule) is overwritten like any other: its array keeps its shape.
    """
    owned: set[int] = set()  # slots whose array nobody else refers to
    targets: dict[int, int] = {}
    # A value that is not an array of its own (a transpose's, a reshape's: maybe a view of its inputs)
    # shows its inputs' arrays: while it lives (until its slot is freed; never, if it is fetched or kept
    # for the reverse sweep), nothing writes into them in place. (A transpose of x read after x * x was
    # written into x's array showed x * x.)
    shows: dict[int, set[int]] = {}  # a slot that may show arrays -> the slots of those arrays
    shown: dict[int, set[int]] = {}  # an array's slot -> the live slots that may show it
    if reverse is None:
        kept_slots = {tape.slot_of[k] for k in tape.kept}
    else:  # the program keeps every value the sweep is handed; its last forward readers are these
        kept_slots = {tape.slot_of[k] for k in values_read(tape, reverse)}
        frees = last_reads([ins.args for ins in instructions], kept_slots)
        instructions = [dataclasses.replace(ins, free=free) for ins, free in zip(instructions, frees)]
    for ins in instructions:
        node = ins.node
        spec = specs.get(node.id)
        op = node.op
        if op.inplace and op.writes_out and spec is not None and spec.shape and node.id not in fused and \
                type(op).__module__.startswith("vertexflow."):
            for pos, slot in enumerate(ins.args):
                producer = node.inputs[pos] if pos < len(node.inputs) else None
                if producer is None or slot not in owned or slot not in ins.free or slot in kept_slots or \
                        shown.get(slot):
                    continue
                given = specs.get(producer.id)
                if given is not None and given.shape == spec.shape and given.dtype == spec.dtype:
                    targets[ins.index] = slot
                    break
        handed = passes_on(node) and node.id not in fused and ins.args[0] in owned and ins.args[0] in ins.free
        if ins.index in targets or (node.id in pooled and not op.views) or owns_its_array(node) or handed:
            if ins.out not in kept_slots:
                owned.add(ins.out)
        elif node.id not in fused:  # (a fused group's kernel writes an array of its own)
            arrays = set().union(*(shows.get(slot, {slot}) for slot in ins.args))
            shows[ins.out] = arrays
            for slot in arrays:
                shown.setdefault(slot, set()).add(ins.out)
        for slot in ins.free:
            owned.discard(slot)
            for array in shows.pop(slot, ()):
                shown[array].discard(slot)
        if ins.index in targets:
            owned.add(ins.out)
    return targets


def values_read(tape: Tape, reverse: ReversePlan) -> set[int]:
    """The vertices whose values a training step reads after the forward sweep: the fetched ones and
    those the derivative rules that run read (an op's `vjp_reads_inputs` and `vjp_reads_output`)."""
    fetched = set(tape.fetch_slots)
    read = {node.id for node in tape.order if tape.slot_of[node.id] in fetched}
    for node in reverse.order:
        if node.kind == "op" and any(e >= 0 for e in reverse.outgoing.get(node.id, ())):
            if node.op.vjp_reads_inputs:
                read.update(i.id for i in node.inputs)
            if node.op.vjp_reads_output:
                read.add(node.id)
    return read


def compile_program(tape: Tape, instructions: Sequence[Instruction], specs: Mapping[int, Spec],
                    pooled: Mapping[int, Spec], fused: Mapping[int, Any], xp, buffers=None, blas_lock=None,
                    reverse: ReversePlan | None = None) -> Program:
    """The tape (or its fused form, `instructions`) as a generated function, for these concrete specs.

    Args:
        pooled: {vertex id: Spec} of the outputs that go into reused buffers from `buffers`.
        fused: {root id: FusedOp} of the fused groups (their instructions read the group's inputs).
        blas_lock: held around each BLAS-calling op (a worker beside other workers).
        reverse: also run this reverse plan, returning the wrt vertices' gradients.
    """
    out = _Writer()
    namespace: dict[str, Any] = {}
    var = {slot: f"v{slot}" for slot in tape.slot_of.values()}
    loads = [var[slot] for slot, _ in tape.loads]
    out.lines.append(f"def program({', '.join(loads)}):")
    if blas_lock is not None:
        namespace["L"] = blas_lock
    targets = inplace_targets(instructions, specs, tape, pooled, fused, reverse)
    for ins in instructions:
        node = ins.node
        op = fused.get(node.id) or node.op
        in_specs = tuple(specs[i.id] for i in (op.group.inputs if node.id in fused else node.inputs))
        kernel = op.bind(xp, in_specs, specs[node.id])
        k = f"k{ins.index}"
        namespace[k] = kernel
        args = [var[a] for a in ins.args]
        call_args = ", ".join(args)
        if ins.index in targets:
            call = f"{k}({call_args}, out={var[targets[ins.index]]})"
        elif node.id in pooled and buffers is not None and op.writes_out:
            taker = f"t{ins.index}"
            namespace[taker], taken = _taker(buffers, pooled[node.id], op, args)
            call = f"{k}({call_args}, out={taker}({taken}))"
        else:
            call = f"{k}({call_args})"
        site = Site(node, FORWARD, tuple(args))
        if blas_lock is not None and op.blas:
            out.line("with L:", 1)
            out.line(f"{var[ins.out]} = {call}", 2, site)
        else:
            out.line(f"{var[ins.out]} = {call}", 1, site)
        if node.id in fused and reverse is not None:
            # a group fused in a training step: the sweep reads its inner values' shapes only, the
            # group's own (the plan kept groups whose inner values are shaped as it is)
            inner = [var[tape.slot_of[m.id]] for m in op.group.members if m is not node and m.id in tape.kept]
            if inner:
                out.line(f"{' = '.join(inner)} = {var[ins.out]}")
        if ins.free:
            out.line("del " + ", ".join(var[s] for s in ins.free))
    fetched = [var[s] for s in tape.fetch_slots]
    if reverse is None:
        out.line(f"return ({', '.join(fetched)},)")
    else:
        wrt, made = _reverse_lines(out, namespace, reverse, tape, var, xp, blas_lock, specs)
        out.line(f"return ({', '.join(fetched)},), ({''.join(name + ', ' for name in wrt)})")
    name = f"<vertexflow program {next(_counter)}>"
    source = "\n".join(out.lines) + "\n"
    program = Program(source, namespace, out.sites, name)
    if reverse is not None:
        program.made = frozenset(w.id for w, fresh in zip(reverse.wrt, made) if fresh)
    return program


def _sum_edges(add: Callable, *parts):
    """Edge gradients summed in the order given, None ones skipped (reverse mode's `sum_edges`)."""
    total = None
    for part in parts:
        if part is not None:
            total = part if total is None else add(total, part)
    return total


def _derivative(op, math: ArrayMath, positions: tuple[int, ...], bound: Callable | None = None):
    """The op's derivative rule as a call taking (g, *inputs, output) and giving the gradients sent:
    the rule bound for the specs (`Op.bind_vjp`) where the op has one, else its vjp on arrays."""
    none = (None,) * len(positions)
    if bound is None:
        vjp = op.vjp

        def bound(g, *values):
            return vjp(math, g, values[:-1], values[-1])

    if len(positions) == 1:
        position = positions[0]

        def derivative(g, *values):
            return none if g is None else (bound(g, *values)[position],)
    else:
        pick = operator.itemgetter(*positions)

        def derivative(g, *values):
            return none if g is None else pick(bound(g, *values))

    return derivative


def _reverse_lines(out: _Writer, namespace: dict, reverse: ReversePlan, tape: Tape, var: dict, xp,
                   blas_lock, specs: Mapping[int, Spec]) -> tuple[list[str], list[bool]]:
    """Append the reverse sweep of `reverse`; the names holding the wrt vertices' gradients, and whether
    each is an array the sweep made (from the seed through rules of ops with `vjp_fresh`, or a sum of
    edges), which no feed, param or constant can share memory with."""
    arrays = ArrayMath(xp)
    output = reverse.output
    spec = specs[output.id]
    namespace["seed"] = functools.partial(xp.ones, spec.shape, spec.dtype)  # d output / d output, a fresh array
    namespace["total"] = functools.partial(_sum_edges, arrays.add)
    slot_of = tape.slot_of
    wanted = {w.id for w in reverse.wrt}
    # Forward values the sweep reads, let go after the last derivative rule reading them.
    reads = []
    for node in reverse.order:
        if node.kind == "op" and any(e >= 0 for e in reverse.outgoing.get(node.id, ())):
            reads.append([slot_of[i.id] for i in node.inputs] + [slot_of[node.id]])
        else:
            reads.append([])
    pinned = set(tape.fetch_slots)
    frees = last_reads(reads, pinned)
    result = {}
    made = {0: True}  # edge -> whether its value is an array the sweep made (edge 0: the seed)
    for node, free in zip(reverse.order, frees):
        g = f"g{node.id}"
        parts = []
        for edge in reverse.incoming[node.id]:
            parts.append("seed()" if edge == 0 else f"e{edge}")
        g_made = all(made.get(edge, False) for edge in reverse.incoming[node.id])
        outgoing = reverse.outgoing.get(node.id) if node.kind == "op" else None
        if not parts:  # nothing reaches it (its consumers pass no gradient): it sends none either
            silent = [f"e{e}" for e in outgoing or () if e >= 0]
            if silent:
                out.line(" = ".join(silent) + " = None")
            continue
        out.line(f"{g} = {parts[0]}" if len(parts) == 1 else f"{g} = total({', '.join(parts)})")
        edges = [p for p in parts if p.startswith("e")]
        if edges:
            out.line("del " + ", ".join(edges))
        if node.id in wanted:
            result[node.id] = g, g_made
        if outgoing and any(e >= 0 for e in outgoing):
            made.update((e, g_made and node.op.vjp_fresh) for e in outgoing if e >= 0)
            positions = tuple(p for p, e in enumerate(outgoing) if e >= 0)
            d = f"d{node.id}"
            needs = reverse.needs[node.id]
            bound = node.op.bind_vjp(xp, needs, tuple(specs[i.id] for i in node.inputs), specs[node.id])
            values = [var[slot_of[i.id]] for i in node.inputs] + [var[slot_of[node.id]]]
            site = Site(node, BACKWARD, (g, *values[:-1]))
            if bound is None:
                namespace[d] = _derivative(node.op, ArrayMath(xp, needs), positions, bound)
                sent = ", ".join(f"e{outgoing[p]}" for p in positions)
                call = f"{sent}, = {d}({g}, {', '.join(values)})"
            else:  # called from the line itself: a gradient per input, those not sent unpacked into _
                namespace[d] = bound
                sent = ", ".join(f"e{e}" if e >= 0 else "_" for e in outgoing)
                none = "(" + "None, " * len(outgoing) + ")"
                call = f"{sent}, = {d}({g}, {', '.join(values)}) if {g} is not None else {none}"
            if blas_lock is not None and node.op.blas:
                out.line("with L:", 1)
                out.line(call, 2, site)
            else:
                out.line(call, 1, site)
            if node.id not in wanted:
                out.line(f"del {g}")
        if free:
            out.line("del " + ", ".join(var[s] for s in free))
    found = [result.get(w.id, ("None", True)) for w in reverse.wrt]
    return [name for name, _ in found], [fresh for _, fresh in found]


# -- an actor's segments ---------------------------------------------------------------------------
class SegmentProgram:
    """A segment of an actor's program (`actors.program.Segment`) compiled for one set of fed shapes.

    Called with the actor's `values` (vertex id -> array) and its status; it computes the
    segment's members into `values` and lets go what no later member reads. On a failure it
    returns the index of the entry that raised, with its error as the core reports it, so the
    actor can go on from there one member at a time (a Failure flows on like a value).
    """

    def __init__(self, source: str, namespace: dict, sites: dict[int, tuple[int, Site]], name: str):
        self.source = source
        self.sites = sites
        exec(compile(source, name, "exec"), namespace)  # noqa: S102 - our own generated code
        self.function = namespace["segment"]
        self.code = self.function.__code__
        _programs_by_code[self.code] = self

    def __call__(self, values: dict, status) -> tuple[int, BaseException] | None:
        try:
            self.function(values, status)
        except BaseException as exc:  # noqa: BLE001 - a vertex's failure, located below
            tb = exc.__traceback__
            line = None
            while tb is not None:
                if tb.tb_frame.f_code is self.code:
                    line = tb.tb_lineno
                tb = tb.tb_next
            found = self.sites.get(line)
            if found is None:
                raise
            index, site = found
            failure = _failed(site.node, [values.get(int(a)) for a in site.args], exc, site.phase)
            return index, failure.error
        return None


def compile_segment(entries: Sequence, specs: Mapping[int, Spec], pooled: Mapping[int, Spec], xp, buffers=None,
                    blas_lock=None, made: Sequence[tuple[int, bool | None]] = (),
                    shown: Iterable[int] = ()) -> SegmentProgram:
    """A segment's entries as one generated function `segment(values, status)` for these specs.

    In place where it is safe: an elementwise member may write into an input made in this
    actor (in this segment, or in an earlier one: `made`, (id, writes a fresh array: Segment.made)) that
    nothing else reads (not sent, fetched, or kept for the reverse sweep, which the entries'
    frees already leave out) and no value that may be a view of it shows (`shown`: Segment.shown).
    """
    shown = frozenset(shown)
    out = _Writer()
    namespace: dict[str, Any] = {}
    if blas_lock is not None:
        namespace["L"] = blas_lock
    out.lines.append("def segment(values, status):")
    owned: set[int] = {key for key, fresh in made if fresh or (fresh is False and key in pooled)}
    sites: dict[int, tuple[int, Site]] = {}
    for index, entry in enumerate(entries):
        if entry.is_source:
            continue
        node = entry.member
        op = entry.op or node.op
        fused_inputs = getattr(op, "group", None)
        in_nodes = fused_inputs.inputs if fused_inputs is not None else node.inputs
        spec = specs[node.id]
        kernel = op.bind(xp, tuple(specs[i.id] for i in in_nodes), spec)
        k, m = f"k{index}", f"m{index}"
        namespace[k], namespace[m] = kernel, node
        args = [f"values[{key}]" for key in entry.inputs]
        target = None
        if op.inplace and op.writes_out and spec.shape and entry.op is None and \
                type(op).__module__.startswith("vertexflow."):
            for key, producer in zip(entry.inputs, in_nodes):
                given = specs.get(producer.id)
                if key in owned and key in entry.free and key not in shown and given is not None and \
                        given.shape == spec.shape and given.dtype == spec.dtype:
                    target = key
                    break
        if target is not None:
            call = f"{k}({', '.join(args)}, out=values[{target}])"
        elif node.id in pooled and buffers is not None and op.writes_out:
            taker = f"t{index}"
            namespace[taker], taken = _taker(buffers, pooled[node.id], op, args)
            call = f"{k}({', '.join(args)}, out={taker}({taken}))"
        else:
            call = f"{k}({', '.join(args)})"
        out.line(f"status.vertex = {m}")
        site = Site(node, FORWARD, tuple(str(key) for key in entry.inputs))
        if blas_lock is not None and op.blas:
            out.line("with L:")
            out.line(f"values[{node.id}] = {call}", 2)
        else:
            out.line(f"values[{node.id}] = {call}")
        sites[len(out.lines)] = (index, site)
        if entry.free:
            out.line("; ".join(f"del values[{key}]" for key in entry.free))
        handed = passes_on(node) and entry.op is None and entry.inputs[0] in owned and entry.inputs[0] in entry.free
        if (target is not None or (node.id in pooled and not op.views) or owns_its_array(node) or handed) \
                and not entry.readers \
                and not entry.fetched:
            owned.add(node.id)
        owned.difference_update(entry.free)
        if target is not None and not entry.readers and not entry.fetched:
            owned.add(node.id)
    out.line("return None")
    return SegmentProgram("\n".join(out.lines) + "\n", namespace, sites, f"<vertexflow segment {next(_counter)}>")
