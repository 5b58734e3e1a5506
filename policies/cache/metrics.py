"""The cache policy's metrics: lookups by result, why requests bypassed it, what it
stored, the tokens hits saved, and its Redis failures in `dependency_errors`."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.endpoints import NAMES
from gateway.metrics import Metrics

HIT, MISS, BYPASS = RESULTS = ("hit", "miss", "bypass")
# Why a request bypassed the cache.
NOT_CACHEABLE = "not_cacheable"  # not deterministic, per-token data asked, or the model list
DISABLED = "disabled"  # its tier's `enabled: false`
NO_STORE = "no_store"  # the request's Cache-Control: no-store
IDENTITY_UNKNOWN = "identity_unknown"  # no probe has read what serves the model yet
STORE_DOWN = "store_unavailable"  # Redis failing or slow
REASONS = (NOT_CACHEABLE, DISABLED, NO_STORE, IDENTITY_UNKNOWN, STORE_DOWN)
REDIS = "redis"
# What a failed Redis call led to: the request served without the cache, or an answer
# not stored.
CACHE_BYPASS, CACHE_NOT_STORED = ACTIONS = ("cache_bypass", "cache_not_stored")


class CacheMetrics:
    def __init__(self, metrics: Metrics, models: Iterable[str]) -> None:
        requests = metrics.counter(
            "cache_requests",
            f"Requests the cache policy saw, by endpoint and result ({', '.join(RESULTS)}).",
            ("endpoint", "result"),
        )
        self.results = {(e, r): requests.labels(e, r) for e in NAMES for r in RESULTS}
        bypasses = metrics.counter(
            "cache_bypasses",
            f"Requests that bypassed the cache, by reason ({', '.join(REASONS)}).",
            ("reason",),
        )
        self.bypasses = {reason: bypasses.labels(reason) for reason in REASONS}
        saved = metrics.counter(
            "cache_tokens_saved",
            "Tokens (prompt and completion) the stored answers served by hits stand for.",
            ("model",),
        )
        self.saved = {model: saved.labels(model) for model in models}
        self.stored = metrics.counter("cache_stored_entries", "Answers written to the cache store.")
        self.stored_bytes = metrics.counter(
            "cache_stored_bytes",
            "Bytes written to the cache store (compressed in Redis, as held in process).",
        )
        self.memory_bytes = metrics.gauge(
            "cache_memory_bytes", "Bytes held by the in-process cache store."
        )
        self.memory_entries = metrics.gauge(
            "cache_memory_entries", "Answers held by the in-process cache store."
        )
        self.evictions = metrics.counter(
            "cache_memory_evictions",
            "Answers the in-process store dropped to stay within memory_max_bytes.",
        )
        errors = metrics.dependency_errors
        self.redis_errors = {action: errors.labels(REDIS, action) for action in ACTIONS}
        self.metrics = metrics

    def result(self, endpoint: str, result: str) -> None:
        self.results[endpoint, result].inc()

    def bypass(self, endpoint: str, reason: str) -> None:
        self.results[endpoint, BYPASS].inc()
        self.bypasses[reason].inc()
        if reason == STORE_DOWN:
            self.redis_errors[CACHE_BYPASS].inc()
