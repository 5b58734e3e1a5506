"""Identical misses in flight at once in one process: the first goes upstream, the others
wait for its answer, at most `coalesce_wait_seconds`.

Across replicas misses are not coalesced: each replica's first miss goes upstream.
"""

from __future__ import annotations

import asyncio

from policies.cache.entry import Entry


class InFlight:
    def __init__(self) -> None:
        self._leaders: dict[str, asyncio.Future[Entry | None]] = {}
        self.followers = 0  # requests waiting for a leader now

    def lead(self, key: str) -> asyncio.Future[Entry | None] | None:
        """None when this request leads (its answer will be shared), else the leader's."""
        found = self._leaders.get(key)
        if found is not None:
            return found
        self._leaders[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, entry: Entry | None) -> None:
        """The leader's answer (None: not stored, followers go upstream themselves)."""
        future = self._leaders.pop(key, None)
        if future is not None and not future.done():
            future.set_result(entry)

    async def follow(self, leader: asyncio.Future[Entry | None], wait: float) -> Entry | None:
        """The leader's answer, or None when it gives none within `wait` seconds. A
        follower whose client leaves is cancelled here; the leader is not."""
        self.followers += 1
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(leader)
        except TimeoutError:
            return None
        finally:
            self.followers -= 1

    def __len__(self) -> int:
        return len(self._leaders)
