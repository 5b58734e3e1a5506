"""The rate-limit policy's metrics: requests it refused, and its failed calls to Redis."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gateway.metrics import Metrics
from policies.rate_limit.settings import (
    CONCURRENCY,
    QUOTA_DAY,
    QUOTA_MONTH,
    REQUESTS,
    TOKENS,
    RateLimitSettings,
)

DEFAULT_TIER = "default"  # the tier label of requests without a tier
LIMITS = (REQUESTS, TOKENS, CONCURRENCY, QUOTA_DAY, QUOTA_MONTH)
REDIS = "redis"
# What a failed Redis call led to: the request let through or refused (`failure_mode`),
# or a completion's settlement lost (the reservation stays charged).
FAIL_OPEN, FAIL_CLOSED, SETTLE_LOST = ACTIONS = ("fail_open", "fail_closed", "settle_lost")


class RateLimitMetrics:
    def __init__(self, metrics: Metrics, settings: RateLimitSettings, tiers: Iterable[str]) -> None:
        self.refused = metrics.counter(
            "rate_limited",
            "Requests refused by the rate-limit policy, by tier and by the limit that refused "
            f"them ({', '.join(LIMITS)}).",
            ("tier", "limit"),
        )
        for tier, limit in _initial_series(settings, tiers):
            self.refused.labels(tier, limit)
        errors = metrics.dependency_errors
        self._redis_errors = {action: errors.labels(REDIS, action) for action in ACTIONS}

    def refusal(self, tier: str | None, limit: str) -> None:
        self.refused.labels(tier or DEFAULT_TIER, limit).inc()

    def redis_failed(self, action: str) -> None:
        self._redis_errors[action].inc()


def _initial_series(settings: RateLimitSettings, tiers: Iterable[str]) -> Iterator[tuple[str, str]]:
    """Every (tier, limit) of the document's tiers, and the limits of requests without a
    tier: each exists from the start (after a reload too), at 0."""
    for tier in tiers:
        for limit in LIMITS:
            yield tier, limit
    if settings.default is not None:
        for limit, _ in settings.default.configured():
            yield DEFAULT_TIER, limit
