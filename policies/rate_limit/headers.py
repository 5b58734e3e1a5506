"""OpenAI's rate-limit headers and refusals."""

from __future__ import annotations

from collections.abc import Sequence

from multidict import CIMultiDict

from gateway.errors import GatewayError
from policies.rate_limit.buckets import Bucket
from policies.rate_limit.settings import CONCURRENCY, QUOTA_DAY, QUOTA_MONTH, REQUESTS, TOKENS


def duration(ms: int) -> str:
    """Go's duration format, as OpenAI writes it: `20ms`, `1s`, `1.5s`, `6m0s`, `2h0m0s`."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    seconds = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def retry_after(ms: int) -> str:
    """Whole seconds, rounded up (at least 1)."""
    return str(max(1, -(-ms // 1000)))


def _who(bucket: Bucket, tier: str | None) -> str:
    if bucket.scope == "tier":
        return f"the '{tier}' tier as a whole"
    return "your user" if bucket.scope == "user" else "you"


def refusal(bucket: Bucket, tier: str | None, cost: int, retry_ms: int) -> GatewayError:
    who, limit, wait = _who(bucket, tier), bucket.limit, duration(retry_ms)
    headers = {"Retry-After": retry_after(retry_ms)}
    if bucket.unit in (QUOTA_DAY, QUOTA_MONTH):
        period = "UTC day" if bucket.unit == QUOTA_DAY else "UTC month"
        return GatewayError(
            429,
            f"You exceeded your token quota: {limit} tokens per {period} for {who}, and this "
            f"request reserves up to {cost}. It renews in {wait}; a smaller max_tokens may "
            "fit what is left.",
            type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    if bucket.unit == CONCURRENCY:
        message = (
            f"Too many requests in flight: {who} may have {limit} at once. Retry when one of "
            "them has finished."
        )
        return GatewayError(
            429, message, type="requests", code="rate_limit_exceeded", headers=headers
        )
    if bucket.unit == REQUESTS:
        message = f"Rate limit reached for requests: {limit} per minute for {who}. Retry in {wait}."
        return GatewayError(
            429, message, type="requests", code="rate_limit_exceeded", headers=headers
        )
    return GatewayError(
        429,
        f"Rate limit reached for tokens: {limit} per minute for {who}; this request reserves "
        f"{cost} (prompt estimate plus max_tokens). Retry in {wait}, or lower max_tokens.",
        type="tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


def set_headers(buckets: Sequence[Bucket], results: list[int], headers: CIMultiDict[str]) -> None:
    """The tightest request and token bucket of those a request touched (`results`:
    remaining_1, reset_ms_1, ... in the same order, as admit.lua returns them)."""
    for unit, suffix in ((REQUESTS, "requests"), (TOKENS, "tokens")):
        best: tuple[int, int, int] | None = None  # remaining, reset ms, limit
        for position, bucket in enumerate(buckets):
            if bucket.unit == unit:
                remaining = results[2 * position]
                if best is None or remaining < best[0]:
                    best = (remaining, results[2 * position + 1], bucket.limit)
        if best is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = str(best[2])
            headers[f"x-ratelimit-remaining-{suffix}"] = str(best[0])
            headers[f"x-ratelimit-reset-{suffix}"] = duration(best[1])
