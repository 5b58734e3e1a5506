"""The cache policy's use of the semantic index: after an exact miss, the stored answer of
a prompt close enough to this one, asked in the same partition.

The partition is the exact key of the request with its compared text taken out
(`semantic_text`): the same endpoint, model identity, scope and every other field, so a
semantic hit never crosses callers, models, parameters or conversations. The vector made
for a miss's lookup is kept and indexed once its answer is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.policy import PolicyEnv
from gateway.redis_scripts import Client
from policies.cache.entry import Entry
from policies.cache.key import cache_key
from policies.cache.semantic import SemanticIndex, SemanticSettings, Vector, semantic_text
from policies.cache.store import Store


@dataclass(slots=True)
class Probe:
    """One request's side of the semantic index: what it compares, and where."""

    text: str
    partition: str
    vector: Vector | None = None


class Similar:
    def __init__(
        self,
        settings: SemanticSettings,
        env: PolicyEnv,
        redis: Client | None,
        prefix: str,
        where: str = "Redis",
    ) -> None:
        self.index = SemanticIndex(settings, env, redis, prefix, where)

    async def start(self) -> None:
        await self.index.start()

    async def close(self) -> None:
        await self.index.close()

    @staticmethod
    def probe(
        endpoint: str, model: str, identity: str, scope: str, body: dict[str, Any]
    ) -> Probe | None:
        """What this request compares, or None (no single user text to compare)."""
        found = semantic_text(endpoint, body)
        if found is None:
            return None
        text, rest = found
        partition = cache_key(endpoint, model, identity, scope, rest)
        return Probe(text, partition) if partition is not None else None

    async def find(self, probe: Probe, store: Store) -> tuple[Entry, float] | None:
        """The stored answer of the closest prompt of the partition, and its similarity."""
        probe.vector = await self.index.embed(probe.text)
        if probe.vector is None:
            return None
        found = await self.index.nearest(probe.partition, probe.vector)
        if found is None:
            return None
        key, similarity = found
        entry = await store.get(key)  # None: that answer expired since it was indexed
        return (entry, similarity) if entry is not None else None

    async def remember(self, probe: Probe, key: str) -> None:
        """Index the answer just stored under `key` (a request that skipped the lookup,
        `no-cache`, has its prompt embedded now, after its answer was sent)."""
        if probe.vector is None:
            probe.vector = await self.index.embed(probe.text)
        if probe.vector is not None:
            await self.index.add(probe.partition, probe.vector, key)
