"""Where stored answers live: Redis (shared by every replica, TTL kept by Redis), or an
in-process store bounded in bytes, least recently used out.

A store never makes an error for a client: a Redis that fails or is slower than
`storage.redis_timeout_seconds` raises `StoreDown`, the policy skips the cache for that
request, and while the outage lasts calls fail at once (one call per
`gateway.redis_scripts.PROBE_SECONDS` tries Redis again, per node of a cluster), so an
outage costs requests no waiting.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

from gateway.policy import PolicyEnv
from gateway.redis_cluster import open_client
from gateway.redis_scripts import Backend, Client, Unavailable, where
from policies.cache.entry import Entry, decode, encode
from policies.cache.metrics import CacheMetrics
from policies.cache.settings import CacheSettings

log = logging.getLogger("policies.cache")

# Bytes an in-process entry costs beyond its body: the key, the usage, the bookkeeping.
ENTRY_OVERHEAD = 512


class StoreDown(Exception):
    """The store cannot be used for this call."""


class Store(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl_seconds: float) -> int:
        """Store `entry`; the bytes it takes (0: not kept)."""
        ...


class MemoryStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[str, tuple[float, Entry, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry, _ = found
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: Entry, ttl_seconds: float) -> int:
        size = entry.size + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return 0
        if key in self._entries:
            self._drop(key)
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._entries[key] = (time.monotonic() + ttl_seconds, entry, size)
        self.bytes += size
        return size

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size


class RedisStore:
    def __init__(self, backend: Backend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    async def get(self, key: str) -> Entry | None:
        value = await self._call("GET", f"{self.prefix}:{key}")
        return decode(value) if isinstance(value, bytes) else None

    async def put(self, key: str, entry: Entry, ttl_seconds: float) -> int:
        value = encode(entry)
        ttl_ms = max(1, int(ttl_seconds * 1000))
        await self._call("SET", f"{self.prefix}:{key}", value, "PX", ttl_ms)
        return len(value)

    async def ping(self) -> bool:
        return await self.backend.ping()

    async def _call(self, *args: object) -> object:
        try:
            return await self.backend.command(*args)
        except Unavailable as exc:
            raise StoreDown(str(exc)) from exc


async def open_store(
    settings: CacheSettings, env: PolicyEnv, metrics: CacheMetrics
) -> tuple[Store, Client | None]:
    """The store in force (Redis when a URL is set, else in process), and its Redis client."""
    resources, storage = env.resources, env.config.storage
    url = settings.redis_url or storage.redis_url
    if url is None:
        memory = await resources.get("cache.memory", _memory_store, _nothing)
        memory.max_bytes = settings.memory_max_bytes
        env.metrics.track(metrics.memory_bytes, lambda: memory.bytes)
        env.metrics.track(metrics.memory_entries, lambda: len(memory))
        return memory, None
    # The one connection of the process when it is the gateway's Redis (rate limits
    # share it); a client of its own for a Redis of the cache's own.
    name = "redis" if url == storage.redis_url else f"cache.redis.{_digest(url)}"
    client = await resources.get(name, lambda: _client(url), _close)
    env.metrics.track(metrics.memory_bytes, _zero)
    env.metrics.track(metrics.memory_entries, _zero)
    backend = Backend(
        client, storage.redis_timeout_seconds, where(url), (), log, "the cache is skipped"
    )
    return RedisStore(backend, settings.key_prefix), client


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


async def _memory_store() -> MemoryStore:
    return MemoryStore(0)


async def _client(url: str) -> Client:
    return open_client(url)


async def _close(client: Client) -> None:
    await client.close()


def _zero() -> float:
    return 0.0


async def _nothing(_: Any) -> None:
    return None
