"""Which buckets a caller's requests touch, their Redis keys, and what a request costs.

Key layout: `<prefix>:{<tag>}:<scope>:<id>:<limit>[:<window>]`. The `{tag}` is Redis
Cluster's hash tag: all keys one script call touches must share a slot, so the tag is
the most widely shared scope the caller's tier limits: the tier when it has whole-tier
buckets, else the user when it has per-user buckets, else the caller (API key, token
subject or client address), which spreads callers over the cluster.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from policies.rate_limit.settings import (
    CONCURRENCY,
    QUOTA_DAY,
    QUOTA_MONTH,
    REQUESTS,
    TOKENS,
    Limits,
    TierLimits,
)

MINUTE_MS = 60_000
KINDS = {REQUESTS: "b", TOKENS: "b", CONCURRENCY: "c", QUOTA_DAY: "q", QUOTA_MONTH: "q"}
_SAFE = re.compile(r"[A-Za-z0-9:._@/+=-]{1,80}")


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str  # quotas: the window id is appended per request
    kind: str  # "b" token bucket, "c" in-flight set, "q" quota (see admit.lua)
    limit: int
    unit: str  # requests, tokens, concurrency, quota_day, quota_month
    scope: str  # "key", "user", "tier": whose bucket it is, for messages


@dataclass(frozen=True, slots=True)
class Plan:
    """The buckets of one caller, in the order they are passed to the scripts."""

    buckets: tuple[Bucket, ...]
    requests: tuple[int, ...]  # indexes of request-count buckets (header candidates)
    tokens: tuple[int, ...]  # indexes of tokens-per-minute buckets (header candidates)
    has_quota: bool
    # A plan whose only buckets count requests never needs a completion call.
    settles: bool


def safe_id(value: str) -> str:
    """A key part without braces or odd characters (they would break hash tags)."""
    if _SAFE.fullmatch(value):
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()[:32]


def make_plan(
    prefix: str, tier: str | None, limits: Limits, principal: str, subject: str | None
) -> Plan:
    scopes: list[tuple[str, str, Limits]] = [("key", principal, limits)]
    tag = principal
    if isinstance(limits, TierLimits):
        if limits.per_user is not None and subject is not None:
            scopes.append(("user", subject, limits.per_user))
            tag = f"user:{subject}"
        if limits.whole_tier is not None and tier is not None:
            scopes.append(("tier", tier, limits.whole_tier))
            tag = f"tier:{tier}"
    base = f"{prefix}:{{{safe_id(tag)}}}"
    buckets = [
        Bucket(f"{base}:{scope}:{safe_id(ident)}:{unit}", KINDS[unit], value, unit, scope)
        for scope, ident, scoped in scopes
        for unit, value in scoped.configured()
    ]
    return Plan(
        tuple(buckets),
        tuple(i for i, b in enumerate(buckets) if b.unit == REQUESTS),
        tuple(i for i, b in enumerate(buckets) if b.unit == TOKENS),
        any(b.kind == "q" for b in buckets),
        any(b.unit != REQUESTS for b in buckets),
    )


class Windows:
    """The current UTC day and month: ids for quota keys and their ends in unix ms."""

    def __init__(self) -> None:
        self.valid_until = 0.0
        self.ids: dict[str, tuple[str, int]] = {}

    def current(self, now: float) -> dict[str, tuple[str, int]]:
        if now >= self.valid_until:
            today = datetime.fromtimestamp(now - now % 86400, UTC)  # unix days: 86400 s
            tomorrow = today + timedelta(days=1)
            month = today.replace(day=1)
            next_month = (month + timedelta(days=32)).replace(day=1)
            self.ids = {
                QUOTA_DAY: (today.strftime("%Y%m%d"), int(tomorrow.timestamp() * 1000)),
                QUOTA_MONTH: (month.strftime("%Y%m"), int(next_month.timestamp() * 1000)),
            }
            self.valid_until = tomorrow.timestamp()
        return self.ids


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):  # a content part
        return _text_length(value.get("text"))
    if isinstance(value, list):  # content parts, a list of prompts, or token ids
        return sum(4 if isinstance(v, int) else _text_length(v) for v in value)
    return 0


def prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """A cheap estimate: about four characters per token, plus a few per chat message."""
    if endpoint == "chat.completions":
        messages = body.get("messages") or []
        chars = sum(_text_length(m.get("content")) + 16 for m in messages if isinstance(m, dict))
    elif endpoint == "completions":
        chars = _text_length(body.get("prompt"))
    else:
        chars = _text_length(body.get("input"))
    return chars // 4 + 1


def completion_tokens(body: dict[str, Any], tier_cap: int | None, default: int) -> int:
    """The most the answer may cost: max_tokens (capped by the tier) times `n` choices."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = asked if isinstance(asked, int) and asked > 0 else (tier_cap or default)
    if tier_cap is not None:
        tokens = min(tokens, tier_cap)
    n = body.get("n")
    return tokens * (n if isinstance(n, int) and 1 <= n <= 128 else 1)
