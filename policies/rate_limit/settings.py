"""The rate-limit policy's settings: limits per tier, per user, per whole tier, and a default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.policy import PolicySettings

# Which limit refused a request: the `limit` label of llama_gateway_rate_limited_total.
REQUESTS, TOKENS, CONCURRENCY, QUOTA_DAY, QUOTA_MONTH = (
    "requests",
    "tokens",
    "concurrency",
    "quota_day",
    "quota_month",
)

Count = int | None


class Limits(PolicySettings):
    """Each limit is optional; a missing one does not limit."""

    requests_per_minute: Count = Field(None, gt=0)
    tokens_per_minute: Count = Field(None, gt=0)
    concurrency: Count = Field(None, gt=0)  # requests in flight at once
    tokens_per_day: Count = Field(None, gt=0)  # calendar day, UTC
    tokens_per_month: Count = Field(None, gt=0)  # calendar month, UTC

    def configured(self) -> list[tuple[str, int]]:
        """(limit name, value) of every limit that is set."""
        pairs = [
            (REQUESTS, self.requests_per_minute),
            (TOKENS, self.tokens_per_minute),
            (CONCURRENCY, self.concurrency),
            (QUOTA_DAY, self.tokens_per_day),
            (QUOTA_MONTH, self.tokens_per_month),
        ]
        return [(name, value) for name, value in pairs if value is not None]


class TierLimits(Limits):
    """Limits per caller (API key, token subject or client address) of a tier, plus
    optional buckets shared by all keys of one user and by the whole tier."""

    per_user: Limits | None = None
    whole_tier: Limits | None = None


class RateLimitSettings(PolicySettings):
    # Limits by tier name; a tier not listed here is not limited.
    tiers: dict[str, TierLimits] = Field(default_factory=dict)
    # For requests that have no tier (no auth policy before this one), per caller.
    default: Limits | None = None
    # When Redis cannot be reached in time: let requests through, or refuse them (503).
    failure_mode: Literal["open", "closed"] = "open"
    key_prefix: str = Field("llgw:rl", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    # Tokens reserved for the answer when neither the request nor its tier names max_tokens.
    default_max_tokens: int = Field(1024, gt=0)
    # An in-flight slot frees itself after this long, whatever happened to its request.
    concurrency_ttl_seconds: float = Field(900, gt=0)
