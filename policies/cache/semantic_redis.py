"""The semantic index on Redis, shared by every replica: one stream per partition.

Each entry of a partition's stream holds a unit float32 vector (`v`, little-endian bytes)
and the exact-cache key of its answer (`k`); `XADD ... MAXLEN` keeps the newest
`max_entries` of them, exactly the ring each replica mirrors. A replica that has a
partition in its mirror asks only for the entries after the last one it applied
(`XRANGE key (id +`); one that has not reads the newest `max_entries` once. Stream IDs grow
with Redis's clock, so entries added after a restart or a flush still sort after those a
mirror remembers; entries of a flushed Redis left in a mirror point to answers that are
gone too, and the exact lookup misses them.

Calls go through a `gateway.redis_scripts.Backend`: while Redis (or the cluster node of
a partition) fails, they fail at once and one call per `PROBE_SECONDS` tries it again, so
an outage costs requests no waiting.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from gateway.redis_scripts import Backend, Unavailable
from policies.cache.semantic_mirror import Floats, Mirror, Partition

__all__ = ["RedisIndex", "Unavailable", "stream_id"]

LITTLE_F32 = np.dtype("<f4")


def stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


class RedisIndex:
    def __init__(self, backend: Backend, mirror: Mirror, ttl: int) -> None:
        self.backend = backend
        self.mirror = mirror
        self.ttl = ttl

    async def sync(self, key: str, dim: int) -> Partition:
        """The mirror's copy of partition `key`, brought up to date with Redis."""
        partition = self.mirror.get(key)
        if partition is None:
            # Newest first, so that COUNT keeps the entries the stream itself keeps.
            count = self.mirror.capacity
            newest = await self._range("XREVRANGE", key, "+", "-", "COUNT", count)
            entries = newest[::-1]
            partition = self.mirror.get(key)  # another lookup may have loaded it meanwhile
            if partition is None:
                partition = self.mirror.create(key, dim)
            self._apply(partition, entries)
            self.mirror.trim()
            return partition
        after = "-" if partition.seen is None else "({}-{}".format(*partition.seen)
        entries = await self._range("XRANGE", key, after, "+", "COUNT", self.mirror.capacity)
        if len(entries) >= self.mirror.capacity:
            # Others added a whole partition's worth since: read it afresh.
            self.mirror.drop(key)
            return await self.sync(key, dim)
        self._apply(partition, entries)
        self.mirror.trim()
        return partition

    async def add(self, key: str, values: Floats, entry: str) -> None:
        data = values.astype(LITTLE_F32).tobytes()
        cap = self.mirror.capacity
        # Sent in one write (the client pipelines a turn's calls) and run in order.
        added = self.backend.command("XADD", key, "MAXLEN", cap, "*", "v", data, "k", entry)
        expiry = self.backend.command("EXPIRE", key, self.ttl)
        await asyncio.gather(added, expiry)

    async def _range(self, *args: Any) -> list[Any]:
        entries = await self.backend.command(*args)
        if not isinstance(entries, list):
            raise Unavailable(f"Redis answered {type(entries).__name__} to {args[0]}")
        return entries

    def _apply(self, partition: Partition, entries: list[Any]) -> None:
        """Add the stream entries newer than the last one applied (two lookups of one
        partition may fetch the same entries); malformed ones are skipped."""
        for item in entries:
            try:
                raw_id, fields = item
                seen = stream_id(raw_id)
                pairs = dict(zip(fields[::2], fields[1::2], strict=True))
                values = np.frombuffer(pairs[b"v"], dtype=LITTLE_F32).astype(np.float32)
                entry = pairs[b"k"].decode()
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue
            if partition.seen is not None and seen <= partition.seen:
                continue
            partition.seen = seen
            partition.add(values, entry)
