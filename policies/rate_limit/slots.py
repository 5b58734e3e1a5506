"""In-flight slots of long requests: their expiry is pushed back while they run.

A slot frees itself after `concurrency_ttl_seconds`, so that a crashed replica cannot
leak it. A request still running by then (a long stream, a client reading slowly on
purpose) would lose its slot early and let its caller exceed the concurrency limit. So
while a request runs, its slots are touched every third of that time: one small script
call per long request, and none for the requests that end before.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from policies.rate_limit.store import TOUCH, Backend, Unavailable


@dataclass(slots=True)
class Held:
    keys: list[str]  # the concurrency sets the request is in
    member: str
    timer: asyncio.TimerHandle | None = None
    released: bool = False


@dataclass(slots=True)
class Keeper:
    backend: Backend
    ttl_ms: int
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def hold(self, keys: list[str], member: str) -> Held:
        held = Held(keys, member)
        self._schedule(held)
        return held

    def release(self, held: Held) -> None:
        held.released = True
        if held.timer is not None:
            held.timer.cancel()

    def _schedule(self, held: Held) -> None:
        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(self.ttl_ms / 3000, self._start, held)

    def _start(self, held: Held) -> None:
        task = asyncio.create_task(self._touch(held), name="rate_limit.touch")
        self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def _touch(self, held: Held) -> None:
        if held.released:
            return
        # Redis failing is logged by the backend; the slot then expires as it would have.
        with contextlib.suppress(Unavailable):
            await self.backend.run(TOUCH, held.keys, [held.member, self.ttl_ms])
        if not held.released:
            self._schedule(held)
