"""API key records by id, cached for `cache_seconds`: one database query per id at a time.

Made-up keys (`sk-gw_<random id>_...`) are answered from a cache of their own, so a flood
of them costs one query per id and can't evict the records of real keys; concurrent
requests for one id share one query. Every answer is kept for at most `ttl` seconds from
the moment its query began, so a revocation counts everywhere within that time.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Protocol, TypeVar

from policies.auth.keys import ApiKey

T = TypeVar("T")


class Lookup(Protocol):
    async def get(self, key_id: str) -> ApiKey | None: ...


def _put(cache: dict[str, T], key: str, value: T, size: int) -> None:
    cache.pop(key, None)  # re-inserted at the end: the oldest entry goes first
    if len(cache) >= size:
        del cache[next(iter(cache))]
    cache[key] = value


class KeyCache:
    def __init__(self, store: Lookup, ttl: float, size: int = 10_000) -> None:
        self.store = store
        self._ttl = ttl
        self._size = size
        self._known: dict[str, tuple[float, ApiKey]] = {}
        self._unknown: dict[str, float] = {}  # id -> until when it is known not to exist
        self._lookups: dict[str, asyncio.Task[ApiKey | None]] = {}

    async def get(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        known = self._known.get(key_id)
        if known is not None and known[0] > now:
            return known[1]
        if self._unknown.get(key_id, 0.0) > now:
            return None
        lookup = self._lookups.get(key_id)
        if lookup is None:
            lookup = asyncio.create_task(self._lookup(key_id, now))
            self._lookups[key_id] = lookup
            lookup.add_done_callback(partial(self._looked_up, key_id))
        return await asyncio.shield(lookup)  # one caller giving up does not cancel it for all

    async def _lookup(self, key_id: str, began: float) -> ApiKey | None:
        key = await self.store.get(key_id)
        until = began + self._ttl
        if key is None:
            self._known.pop(key_id, None)
            _put(self._unknown, key_id, until, self._size)
        else:
            self._unknown.pop(key_id, None)
            _put(self._known, key_id, (until, key), self._size)
        return key

    def _looked_up(self, key_id: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self._lookups.get(key_id) is task:
            del self._lookups[key_id]
        if not task.cancelled():
            task.exception()  # retrieved: each waiting request has seen (and reported) it
