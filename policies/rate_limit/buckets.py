"""Which buckets a caller's requests touch, their Redis keys, and what a request costs.

Key layout: `<prefix>:{<tag>}:<scope>:<id>:<limit>`. The `{tag}` is Redis
Cluster's hash tag: all keys one script call touches must share a slot, so the tag is
the most widely shared scope the caller's tier limits: the tier when it has whole-tier
buckets, else the user when it has per-user buckets, else the caller (API key, token
subject or client address), which spreads callers over the cluster. Every key a call
touches is passed to the script, quotas included: a quota's window comes from Redis's
clock inside the script, and its key holds the window it counts (see admit.lua).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from gateway.endpoints import BY_NAME, ENDPOINTS, LENGTHS
from gateway.validate import CHOICES
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
# Endpoints whose input is llama-server's `prompt`, which may be a list of prompts.
_PROMPT_LISTS = frozenset(e.name for e in ENDPOINTS if e.input_field == "prompt")
# Quotas are "d" (UTC day) and "m" (UTC month): the script finds the window from Redis's clock.
KINDS = {REQUESTS: "b", TOKENS: "b", CONCURRENCY: "c", QUOTA_DAY: "d", QUOTA_MONTH: "m"}
QUOTAS = ("d", "m")
_SAFE = re.compile(r"[A-Za-z0-9:._@/+=-]{1,80}")


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    kind: str  # "b" token bucket, "c" in-flight set, "d"/"m" quota (see admit.lua)
    limit: int
    unit: str  # requests, tokens, concurrency, quota_day, quota_month
    scope: str  # "key", "user", "tier": whose bucket it is, for messages


@dataclass(frozen=True, slots=True)
class Plan:
    """The buckets of one caller, in the order they are passed to the scripts."""

    buckets: tuple[Bucket, ...]
    requests: tuple[int, ...]  # indexes of request-count buckets (header candidates)
    tokens: tuple[int, ...]  # indexes of tokens-per-minute buckets (header candidates)
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
    """The buckets of `principal` ("key:<id>", "jwt:<sub>", "ip:<addr>", ...). A user is
    the subject within the principal's kind: an API key owner "alice" and a token subject
    "alice" are two users, and no one can name their way into another's buckets."""
    scopes: list[tuple[str, str, Limits]] = [("key", principal, limits)]
    tag = principal
    if isinstance(limits, TierLimits):
        if limits.per_user is not None and subject is not None:
            user = f"{principal.partition(':')[0]}:{subject}"
            scopes.append(("user", user, limits.per_user))
            tag = f"user:{user}"
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
        any(b.unit != REQUESTS for b in buckets),
    )


def _text_length(value: Any, *, every_field: bool = False) -> int:
    """Characters of text in a message content, prompt or input (token ids count 4
    each); with `every_field`, of every key and string in it (tool definitions, tool
    calls: the chat template writes them all into the prompt).

    A loop, not recursion: a body nested as deep as the JSON parser allows (1,024 levels)
    must not exhaust Python's stack."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            if every_field:
                total += sum(map(len, item))
                pending.extend(item.values())
            else:  # a content part, or llama-server's {"prompt_string": ...} prompt
                pending += (item.get("text"), item.get("prompt_string"))
        elif isinstance(item, list):  # content parts, a list of prompts, or token ids
            for part in item:
                if isinstance(part, int):
                    total += 4
                else:
                    pending.append(part)
    return total


def prompt_tokens(endpoint: str, body: dict[str, Any]) -> int:
    """A cheap estimate: about four characters per token, plus a few per chat message."""
    spec = BY_NAME[endpoint]
    value = body.get(spec.input_field) if spec.input_field else None
    chars = _text_length(body.get(spec.instructions_field)) if spec.instructions_field else 0
    if not (spec.chat or (spec.turns and isinstance(value, list))):
        return (chars + _text_length(value)) // 4 + 1
    tools = body.get("tools")
    chars += 0 if tools is None else _text_length(tools, every_field=True)
    for message in value or []:
        if isinstance(message, dict):
            content, calls = message.get("content"), message.get("tool_calls")
            chars += len(content) if isinstance(content, str) else _text_length(content)
            chars += 16 if calls is None else 16 + _text_length(calls, every_field=True)
    return chars // 4 + 1


def completion_tokens(
    endpoint: str, body: dict[str, Any], tier_cap: int | None, default: int
) -> int:
    """The most the answers may cost: the largest length field named (capped by the
    tier), times the answers per prompt, times the prompts."""
    read = BY_NAME[endpoint].lengths
    tokens = choices = 0
    for name in LENGTHS:
        value = body.get(name)
        if isinstance(value, int) and value > tokens:
            tokens = value
    if all(body.get(name) is None for name in read):  # llama-server decides
        tokens = max(tokens, tier_cap or default)
    if tier_cap is not None:
        tokens = min(tokens, tier_cap)
    for name in CHOICES:
        value = body.get(name)
        if isinstance(value, int) and value > choices:
            choices = value
    return tokens * (choices or 1) * _prompts(endpoint, body)


def _prompts(endpoint: str, body: dict[str, Any]) -> int:
    """How many prompts llama-server answers: a `prompt` that is an array without token
    ids is one prompt per element (each gets its own answers)."""
    prompt = body.get("prompt") if endpoint in _PROMPT_LISTS else None
    if isinstance(prompt, list) and not any(isinstance(p, int | float) for p in prompt):
        return max(1, len(prompt))
    return 1
