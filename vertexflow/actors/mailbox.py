"""An actor's mailbox: one bounded trio channel in, and the mail taken out early kept aside.

Messages are `(step, phase, {key: value})`: the step driver's source values,
a producer's value, a consumer's edge gradient. An actor takes the one it
needs next (`take`); whatever else arrives first (a later step's feed, a
value for a later member) is kept per step and phase until asked for.
Sends never block: the network's window of steps in flight bounds what an
inbox can hold, so a full inbox is vertexflow's bug (`InternalError`).
"""

from __future__ import annotations

from typing import Any

import trio

from ..errors import InternalError


class Mailbox:
    def __init__(self, capacity: int):
        self.send_channel, self.receive_channel = trio.open_memory_channel(capacity)
        self.kept: dict[tuple[int, str], dict[int, Any]] = {}

    def post(self, step: int, phase: str, payload: dict[int, Any]) -> None:
        try:
            self.send_channel.send_nowait((step, phase, payload))
        except trio.WouldBlock:
            raise InternalError("an actor inbox overflowed; the step window should prevent this") from None

    def has(self, step: int, phase: str, key: int) -> bool:
        box = self.kept.get((step, phase))
        return box is not None and key in box

    async def take(self, step: int, phase: str, key: int) -> Any:
        """The value `key` of `step` and `phase`, waiting for it if it has not come yet."""
        kept = self.kept
        box = kept.get((step, phase))
        if box is None:
            box = kept[(step, phase)] = {}
        while key not in box:
            at, ph, payload = await self.receive_channel.receive()
            target = kept.get((at, ph))
            if target is None:
                # A copy: the same payload may go to several actors, and this box is popped.
                kept[(at, ph)] = dict(payload)
            else:
                target.update(payload)
        value = box.pop(key)
        if not box:
            kept.pop((step, phase), None)
        return value
