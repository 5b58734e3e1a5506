"""The semantic index the cache policy consults after an exact miss.

A lookup embeds the prompt's text (`semantic_text`), finds the most similar prompt stored
in the request's partition, and gives its exact-cache key when the similarity reaches the
threshold; the policy then serves that key's answer. Partitions (computed by the policy
from the scope, the model's identity and every non-prompt parameter) keep a match inside
one caller, one model and one set of parameters; the index adds the identity of the
embedding model, so vectors of two models are never compared.

Shared by every replica through Redis streams when the policy has a Redis client
(`semantic_redis`), in process otherwise; either way the vectors a lookup compares are in
this process's bounded mirror (`semantic_mirror`), which outlives reloads. A failing Redis or
embedding model costs semantic hits, counted, never a request.
"""

from __future__ import annotations

import logging
import time

from gateway.policy import PolicyEnv
from gateway.redis_scripts import Backend, Client
from policies.cache.semantic_embed import Embedder
from policies.cache.semantic_metrics import HIT, MISS, UNAVAILABLE, SemanticMetrics
from policies.cache.semantic_mirror import EPSILON, Mirror, Vector
from policies.cache.semantic_redis import RedisIndex, Unavailable
from policies.cache.semantic_settings import SemanticSettings as SemanticSettings
from policies.cache.semantic_settings import semantic_problems as semantic_problems
from policies.cache.semantic_text import semantic_text as semantic_text

__all__ = ["SemanticIndex", "SemanticSettings", "Vector", "semantic_problems", "semantic_text"]

log = logging.getLogger("policies.cache.semantic")


class SemanticIndex:
    def __init__(
        self,
        settings: SemanticSettings,
        env: PolicyEnv,
        redis: Client | None,
        prefix: str,
        where: str = "Redis",
    ) -> None:
        self.settings = settings
        self.env = env
        self.redis = redis
        self.prefix = prefix
        self.where = where  # the Redis of `redis`, for logs
        self.metrics = SemanticMetrics(env.metrics)
        self.embedder = Embedder(settings, env.upstreams, self.metrics)
        self.mirror: Mirror | None = None
        self.shared: RedisIndex | None = None

    async def start(self) -> None:
        # The mirror is a resource: a reload keeps it (without Redis it is the whole index).
        capacity = self.settings.max_entries_per_partition
        name = f"cache_semantic_mirror:{self.prefix}:{capacity}:{self.redis is not None}"

        async def create() -> Mirror:
            return Mirror(capacity, self.settings.mirror_max_bytes)

        async def forget(mirror: Mirror) -> None:
            mirror.partitions.clear()

        self.mirror = mirror = await self.env.resources.get(name, create, forget)
        mirror.max_bytes = self.settings.mirror_max_bytes
        mirror.trim()
        self.metrics.track_mirror(lambda: mirror.nbytes, lambda: mirror.entries)
        if self.redis is not None:
            timeout = min(
                self.settings.timeout_seconds, self.env.config.storage.redis_timeout_seconds
            )
            ttl = self.settings.partition_ttl_seconds
            consequence = "no semantic hits"
            backend = Backend(self.redis, timeout, self.where, (), log, consequence)
            self.shared = RedisIndex(backend, mirror, ttl)
        await self.embedder.start()

    async def close(self) -> None:
        await self.embedder.close()

    async def embed(self, text: str) -> Vector | None:
        """The text's unit vector; None: too long, or the embedding model failed or timed out
        (counted)."""
        return await self.embedder.embed(text)

    async def nearest(self, partition: str, vector: Vector) -> tuple[str, float] | None:
        """The exact-cache key of the most similar stored prompt, and its similarity, when
        that reaches the threshold; None otherwise (and when Redis fails: counted)."""
        assert self.mirror is not None, "start() first"
        started = time.perf_counter()
        key = self._key(partition, vector)
        dim = len(vector.values)
        if self.shared is None:
            stored = self.mirror.get(key)
        else:
            try:
                stored = await self.shared.sync(key, dim)
            except Unavailable:
                self.metrics.looked_up(UNAVAILABLE, time.perf_counter() - started, None)
                return None
        found = stored.nearest(vector.values) if stored is not None else None
        seconds = time.perf_counter() - started
        if found is None:
            self.metrics.looked_up(MISS, seconds, None)
            return None
        if found[1] + EPSILON < self.settings.threshold:
            self.metrics.looked_up(MISS, seconds, found[1])
            return None
        self.metrics.looked_up(HIT, seconds, found[1])
        return found

    async def add(self, partition: str, vector: Vector, key: str) -> None:
        """Store `key` (an answer the exact cache holds) under the prompt's vector; a failing
        Redis loses the entry (counted), never the request."""
        assert self.mirror is not None, "start() first"
        name = self._key(partition, vector)
        if self.shared is not None:
            try:
                await self.shared.add(name, vector.values, key)
            except Unavailable:
                self.metrics.redis_failed()
            return  # the next lookup's sync brings it into the mirror
        stored = self.mirror.get(name)
        if stored is None:
            stored = self.mirror.create(name, len(vector.values))
        stored.add(vector.values, key)
        self.mirror.trim()

    def _key(self, partition: str, vector: Vector) -> str:
        return f"{self.prefix}:semantic:{vector.space}:{partition}"
