"""An actor's program: what it takes from its inbox, computes, sends and lets go, worked out once.

`compile_program` turns an `ActorPlan` into typed steps. The forward part is
a list of `Segment`s: the values to `Take` from the inbox first, then the
members (`Entry`) computed in one go, inline on the trio thread or in one
worker hand-off. A segment ends before a member that needs a value from
outside not yet taken, and after a member whose value leaves the actor, so
its readers do not wait for the rest. Each entry says which values no later
member reads (let go right after it, the tape's habit), keeping the ones the
reverse sweep needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core import last_reads
from ..graph import Node
from ..ops.base import is_async
from ..tape import owns_its_array
from .plan import SOURCE_KINDS, ActorPlan, NetworkPlan

FEED = -1  # the position a source's own feed is taken for


@dataclass(frozen=True)
class Take:
    """A value to take from the inbox: vertex `key`, wanted by `member` as input `position` (FEED for a source)."""

    key: int
    member: Node
    position: int


@dataclass(frozen=True)
class Entry:
    """One member of a segment.

    Attributes:
        member: the vertex.
        is_source: an input, param or constant: its value was taken, nothing to compute.
        inputs: ids of the values it reads, in argument order.
        readers: indices of the actors its value is sent to.
        fetched: its value is one of the step's fetches.
        free: ids of the values to let go once it has run.
        op: what runs for it when that is not its own op (the fused op of a group it ends).
    """

    member: Node
    is_source: bool
    inputs: tuple[int, ...]
    readers: tuple[int, ...]
    fetched: bool
    free: tuple[int, ...]
    op: Any = None


@dataclass(frozen=True)
class Segment:
    takes: tuple[Take, ...]
    entries: tuple[Entry, ...]
    on_worker: bool
    awaits: bool = False  # its one member's forward is async: awaited on the trio thread, no worker
    joins: bool = False  # it takes a value another actor computed (not a source's): it finishes work begun
    # Values the actor's earlier segments made that nothing outside reads (not sent, not fetched), each with
    # whether its op writes a fresh array of its own (False: only where it is given a pool buffer; None: it
    # may hand on a view of its input, a reshape's): a member here may write into one in place.
    made: tuple[tuple[int, bool | None], ...] = ()
    # Values a member of this actor reads into a value that is not an array of its own (a transpose, a
    # reshape: maybe a view of it): never written in place here, since the view may outlive its reader.
    shown: frozenset[int] = frozenset()

    @property
    def keys(self) -> tuple[int, ...]:
        """The values it takes from the inbox."""
        return tuple(take.key for take in self.takes)

    @property
    def last(self) -> Entry:
        return self.entries[-1]


@dataclass(frozen=True)
class ActorProgram:
    actor: ActorPlan
    segments: tuple[Segment, ...]


def compile_program(actor: ActorPlan, plan: NetworkPlan, workers: bool) -> ActorProgram:
    """The forward program of one actor.

    Args:
        workers: there are worker threads, so segments with expensive members run there.
    """
    fetch_ids = {n.id for n in plan.fetch}
    heavy_ids = actor.heavy_ids if workers else set()
    pieces: list[tuple[list[Take], list[tuple], bool, bool]] = []
    takes: list[Take] = []
    entries: list[tuple] = []
    on_worker = False
    have: set[int] = set()

    def close(awaits: bool = False) -> None:
        nonlocal takes, entries, on_worker
        if takes or entries:
            pieces.append((takes, entries, on_worker and not awaits, awaits))
        takes, entries, on_worker = [], [], False

    for member in actor.members:
        readers = tuple(actor.value_to.get(member.id, ()))
        fetched = member.id in fetch_ids
        if member.kind in SOURCE_KINDS:
            if entries:
                close()
            takes.append(Take(member.id, member, FEED))
            have.add(member.id)
            if readers or fetched:
                entries.append((member, True, (), readers, fetched, None))
                close()
            continue
        inputs = plan.inputs_of(member)
        missing = [(i.id, pos) for pos, i in enumerate(inputs) if i.id not in have]
        awaited = is_async(member.op)
        if (missing or awaited) and entries:
            close()
        for key, pos in missing:
            if key not in have:
                takes.append(Take(key, member, pos))
                have.add(key)
        op = plan.op_of(member)
        entries.append((member, False, tuple(i.id for i in inputs), readers, fetched, op if op is not member.op
                        else None))
        on_worker = on_worker or member.id in heavy_ids
        have.add(member.id)
        if readers or fetched or awaited:
            close(awaited)
    close()

    keep: set[int] = set()
    if plan.reverse is not None:
        for node in actor.backward:
            keep.add(node.id)
            keep.update(i.id for i in node.inputs)
    order = [entry for _, piece, _, _ in pieces for entry in piece]
    frees = iter(last_reads([entry[2] for entry in order], keep))
    segments = []
    made: list[tuple[int, bool | None]] = []
    entries_of = [tuple(Entry(*entry[:5], next(frees), entry[5]) for entry in piece) for _, piece, _, _ in pieces]
    shown = frozenset(key for entries in entries_of for e in entries
                      if not e.is_source and e.op is None and not owns_its_array(e.member) for key in e.inputs)
    for (t, _, worker, awaits), entries in zip(pieces, entries_of):
        joins = any(take.position != FEED and plan.inputs_of(take.member)[take.position].kind not in SOURCE_KINDS
                    for take in t)
        segments.append(Segment(tuple(t), entries, worker, awaits, joins, tuple(made), shown))
        made += [(e.member.id, None if e.op is None and e.member.op.views else e.op is None and owns_its_array(e.member))
                 for e in entries if not e.is_source and not e.readers and not e.fetched]
    segments = tuple(segments)
    return ActorProgram(actor, segments)
