"""The semantic cache's metrics: lookups by result, the similarities they found, the time
embedding and lookup take, the mirror's size, and its failures in `dependency_errors`."""

from __future__ import annotations

from collections.abc import Callable

from gateway.metrics import Metrics

HIT, MISS, UNAVAILABLE = LOOKUP_RESULTS = ("hit", "miss", "unavailable")
# What came of a request for a vector: `too_long` and `unidentified` (the embedding
# upstream's model not yet read by the prober) are skipped on purpose, not failures.
OK, FAILED, TIMEOUT, TOO_LONG, UNIDENTIFIED = EMBED_RESULTS = (
    "ok",
    "failed",
    "timeout",
    "too_long",
    "unidentified",
)
REDIS, EMBEDDINGS = "redis", "embedding_model"
SKIPPED = "semantic_skipped"  # the action: the request went on without a semantic lookup
SIMILARITY_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0)
EMBED_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class SemanticMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.lookups = metrics.counter(
            "cache_semantic_lookups",
            f"Semantic cache lookups by result ({', '.join(LOOKUP_RESULTS)}: Redis failed).",
            ("result",),
        )
        self.embeddings = metrics.counter(
            "cache_semantic_embeddings",
            "Prompts the semantic cache asked a vector for, by result "
            f"({', '.join(EMBED_RESULTS)}).",
            ("result",),
        )
        self.similarity = metrics.histogram(
            "cache_semantic_similarity",
            "Cosine similarity of the nearest stored prompt, by lookup result (hit, miss).",
            ("result",),
            buckets=SIMILARITY_BUCKETS,
        )
        self.embed_seconds = metrics.histogram(
            "cache_semantic_embed_seconds",
            "Time the embedding model took to answer the semantic cache.",
            buckets=EMBED_BUCKETS,
        )
        self.lookup_seconds = metrics.histogram(
            "cache_semantic_lookup_seconds",
            "Time a semantic lookup took (syncing from Redis and comparing).",
            buckets=LOOKUP_BUCKETS,
        )
        self.mirror_bytes = metrics.gauge(
            "cache_semantic_mirror_bytes", "Bytes of the semantic index held in this process."
        )
        self.mirror_entries = metrics.gauge(
            "cache_semantic_mirror_entries", "Entries of the semantic index held in this process."
        )
        self._lookups = {r: self.lookups.labels(r) for r in LOOKUP_RESULTS}
        self._embeddings = {r: self.embeddings.labels(r) for r in EMBED_RESULTS}
        self._similarity = {r: self.similarity.labels(r) for r in (HIT, MISS)}
        errors = metrics.dependency_errors
        self._redis_errors = errors.labels(REDIS, SKIPPED)
        self._embed_errors = errors.labels(EMBEDDINGS, SKIPPED)

    def track_mirror(self, nbytes: Callable[[], float], entries: Callable[[], float]) -> None:
        self.metrics.track(self.mirror_bytes, nbytes)
        self.metrics.track(self.mirror_entries, entries)

    def embedded(self, result: str, seconds: float | None = None) -> None:
        self._embeddings[result].inc()
        if result in (FAILED, TIMEOUT):
            self._embed_errors.inc()
        if seconds is not None:
            self.embed_seconds.observe(seconds)

    def looked_up(self, result: str, seconds: float, similarity: float | None) -> None:
        self._lookups[result].inc()
        if result == UNAVAILABLE:
            self._redis_errors.inc()
            return
        self.lookup_seconds.observe(seconds)
        if similarity is not None:
            self._similarity[result].observe(similarity)

    def redis_failed(self) -> None:
        self._redis_errors.inc()
