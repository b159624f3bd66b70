"""How the actor executor decides, per kind of call, to run as one actor (the tape) or as the network.

A kind of call is a set of fetches, forward or backward, one step or a
stream. Its `Choice` starts undecided: the first call runs on the tape and
measures every vertex (`Profile`); a graph whose expensive vertices cannot
overlap keeps the tape; otherwise the network is wired and warmed at the
second call, then the two ways take turns, and the faster stays: by the
fifth call with the default `calibration=2`.
A graph with vertices that may wait (`must_run_as_network`) runs as the
network from the first call and is never tried on the tape: run one after
another, two vertices that wait for each other would wait forever.
`schedule="network"` or `"tape"` fixes the choice from the start.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..graph import Node
from ..ops.base import says_whether_it_waits, waits

SCHEDULES = ("auto", "network", "tape")
TAPE, NETWORK = "tape", "network"


@dataclass
class Choice:
    """How one kind of call runs: as one actor (the tape) or as the network, and why.

    While `mode` is None the executor is still deciding, in `2 * trials + 1` calls
    (five by default): the first runs on the tape and measures each vertex
    (`costs`, seconds); if the network can overlap expensive work, the second wires
    and warms the network (not timed), then the network and the tape take turns,
    the network first and last, and `times` collects their durations. The faster
    way's fastest call decides (noise only ever adds time).
    """

    mode: str | None = None
    reason: str = "not run yet"
    trials: int = 2  # timed calls of the network before deciding (the tape's: one fewer)
    costs: dict[int, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=lambda: {TAPE: [], NETWORK: []})
    calls: int = 0
    plan_version: int = 0  # bumped when measured costs place the network's vertices otherwise
    network_key: tuple | None = None  # the host's key of the network these calls use

    @staticmethod
    def calls_to_decide(trials: int = 2) -> int:
        """Calls of one kind before the choice is made: the profile, the network's warm-up, then turns."""
        return 2 * trials + 1

    def _order(self) -> list[str]:
        return [TAPE, NETWORK] + [NETWORK, TAPE] * (self.trials - 1) + [NETWORK]

    def next(self) -> str:
        if self.mode is not None:
            return self.mode
        order = self._order()
        return order[min(self.calls, len(order) - 1)]

    def record(self, mode: str, seconds: float) -> None:
        self.calls += 1
        if self.mode is not None:
            return
        if self.calls > 2:  # the profile (traced) and the network's first call (wiring it) are not timed
            self.times[mode].append(seconds)
        if self.calls >= len(self._order()):
            n = min(self.times[NETWORK])
            tape = self.times[TAPE] or [sum(self.costs.values())]  # one trial: the profile's sum of vertices
            t = min(tape)
            self.mode = NETWORK if n < t else TAPE
            self.reason = (f"measured: the network took {n * 1e3:.3g} ms a call, the tape {t * 1e3:.3g} ms "
                           f"(fastest of {len(self.times[NETWORK])} and {len(self.times[TAPE]) or 'the profile'}, "
                           f"decided at call {self.calls})")

    def decide(self, mode: str, reason: str) -> None:
        self.mode, self.reason = mode, reason


class Profile:
    """A step trace that keeps each vertex's time (forward and backward together), passing all on to another."""

    def __init__(self, costs: dict[int, float], inner=None):
        self.costs = costs
        self.inner = inner

    def record(self, node, phase, lane, ready, acquired, start, end, cpu, args, op=None, out_shape=None) -> None:
        self.costs[node.id] = self.costs.get(node.id, 0.0) + (end - start)
        if self.inner is not None:
            self.inner.record(node, phase, lane, ready, acquired, start, end, cpu, args, op, out_shape)

    def __getattr__(self, name):
        if self.inner is not None:
            return getattr(self.inner, name)
        if name == "step":
            return 0
        if name == "step_trace" or name.startswith("__"):
            # It is a step's trace already, not a tracer: an executor given it records into it as it is
            # (answering `step_trace` made the tape think it a tracer, and the profile recorded nothing).
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def must_run_as_network(order: Sequence[Node]) -> str | None:
    """Why these vertices must never run one after another on the tape (None: the tape is safe to try).

    A vertex that may wait (a `blocking` or async op) can wait for another vertex the network
    runs beside it: run on the tape, both would wait forever. The same holds for user ops that do
    not say whether they wait, where two of them could run at once (neither depends on the other):
    the executor cannot be sure, so it runs the network.
    """
    ops = [n for n in order if n.kind == "op"]
    waiting = [n for n in ops if waits(n.op)]
    if waiting:
        names = ", ".join(f"{n.name!r} ({n.op_name})" for n in waiting[:3])
        more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        return (f"vertices may wait ({names}{more} {'is' if len(waiting) == 1 else 'are'} blocking or async): "
                "the network runs them, never one after another on the tape")
    unknown = [n for n in ops if not says_whether_it_waits(n.op)]
    if len(unknown) >= 2:
        depends: dict[int, int] = {}
        for n in order:
            mask = 0
            for i in n.inputs:
                mask |= depends.get(i.id, 0) | (1 << i.id)
            depends[n.id] = mask
        for a, b in itertools.combinations(unknown, 2):
            if not (depends[b.id] >> a.id) & 1 and not (depends[a.id] >> b.id) & 1:
                return (f"user ops {a.name!r} ({a.op_name}) and {b.name!r} ({b.op_name}) could run at once, and "
                        "their ops do not say whether they wait (set `blocking` on the op class): the network "
                        "runs them, never one after another on the tape")
    return None


class Scheduling:
    """The executor's decisions, one `Choice` per kind of call (a mixin of ActorExecutor).

    Needs from the executor: `schedule`, `calibration`, `depth`, `_pool`, `_choices`
    and `_network_plan`.
    """

    def _choice(self, key: tuple, fetch: Sequence[Node] = (), reverse=None) -> Choice:
        choice = self._choices.get(key)
        if choice is None:
            choice = self._choices[key] = Choice(trials=self.calibration)
            if self.schedule != "auto":
                choice.decide(self.schedule, f"schedule={self.schedule!r} given")
            else:
                reason = must_run_as_network(self._order(fetch, reverse))
                if reason is not None:
                    choice.decide(NETWORK, reason)
        return choice

    def _after_profile(self, choice: Choice, fetch, reverse, checked: dict, stream: bool) -> None:
        """The first (measured) run is done: keep the tape if no network could overlap expensive work."""
        if choice.mode is not None:
            return
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        plan = self._network_plan(fetch, reverse, shapes, stream, choice.costs)
        parallel = plan.heavy_count if stream and self.depth > 1 else plan.heavy_width
        if self._pool is None or parallel < 2:
            choice.decide(TAPE, "measured: no two expensive vertices can run at once; a network would only "
                                "add hand-offs")

    def _measures_network(self, choice: Choice) -> bool:
        """Whether this network call also measures its vertices: with schedule="network", the plan starts
        from the ops' cost estimates; the second call (warm: a first call's costs include its page
        faults) times each vertex, and the calls after it run the plan made from those times."""
        return self.schedule == NETWORK and choice.calls == 1 and not choice.costs

    def _after_measured_network(self, choice: Choice, fetch, reverse, checked: dict, stream: bool) -> None:
        """The network measured its vertices: if the measured costs place them otherwise than the estimates
        did, the next calls wire the network `auto` would (the estimates' one retires)."""
        if not choice.costs:
            return
        shapes = {k: tuple(v.shape) for k, v in checked.items()}
        estimated = self._network_plan(fetch, reverse, shapes, stream, None)
        measured = self._network_plan(fetch, reverse, shapes, stream, choice.costs)
        if _placement(measured) != _placement(estimated):
            choice.plan_version += 1

    def _stream_choice(self, nodes: list[Node]) -> Choice:
        return self._choice((tuple(n.id for n in nodes), None, True), nodes)

    def _stream_block(self, choice: Choice) -> int:
        return max(4, 2 * self.depth)


def _placement(plan) -> list[tuple]:
    """Which vertices share an actor and which actors take workers: what a network's speed depends on."""
    return [(tuple(m.id for m in a.members), a.heavy, tuple(sorted(a.heavy_ids))) for a in plan.actors]
