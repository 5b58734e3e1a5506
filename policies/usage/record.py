"""The usage record of one request, built from its RequestContext once the answer is over."""

from __future__ import annotations

import itertools
import operator
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import Field

from gateway.context import DISCONNECTED, RequestContext
from gateway.policy import PolicySettings

# Status recorded when the client hung up before any answer was sent (nginx's convention).
CLIENT_CLOSED = 499
# Text columns hold at most this many characters: a client-sent model name cannot bloat rows.
MAX_TEXT = 256
# What no database text column and no JSON encoder takes: NUL (PostgreSQL refuses it in
# text) and lone surrogates (not UTF-8: a JWT claim can carry one as a `\\ud800` escape).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


class Price(PolicySettings):
    """What a million tokens of a model cost, in the currency of your choice."""

    prompt_per_million: float = Field(0.0, ge=0)
    completion_per_million: float = Field(0.0, ge=0)
    # An answer served from the response cache: per million tokens it stands for (0: free).
    cached_per_million: float = Field(0.0, ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached: bool = False) -> float:
        if cached:
            return (prompt_tokens + completion_tokens) * self.cached_per_million / 1e6
        return (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / 1e6


class UsageRow(NamedTuple):
    """One row of `usage_records`, in column order; times are UTC epoch seconds."""

    id: str
    request_id: str | None
    started_at: float
    finished_at: float
    principal: str | None
    key_id: str | None
    subject: str | None
    tier: str | None
    model: str | None
    endpoint: str
    upstream: str | None
    status: int
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    streamed: bool
    disconnected: bool
    latency_ms: float
    ttft_ms: float | None
    cost: float
    # Calls made to upstreams (more than one after failover; 0 when none was made).
    attempts: int
    # Time waited in the gateway's queue for an upstream slot; None when it did not wait.
    queued_ms: float | None
    # Prompt tokens the upstream took from its prompt (KV) cache; None when it did not say.
    cached_tokens: int | None
    # The variant (a configured model) that served a request naming an experiment, whose
    # name is then the row's `model`; None for any other request.
    variant: str | None

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageRow:
        """A row read back from the journal; ValueError when a required field is missing."""
        missing = [name for name in REQUIRED if data.get(name) is None and name not in LATER]
        if missing:
            raise ValueError(f"usage record without {', '.join(missing)}")
        row = cls._make(data.get(name) for name in cls._fields)
        return row if row.attempts is not None else _before_attempts(row)


COLUMNS: tuple[str, ...] = UsageRow._fields
_NULLABLE = {
    "request_id",
    "principal",
    "key_id",
    "subject",
    "tier",
    "model",
    "upstream",
    "ttft_ms",
    "queued_ms",
    "cached_tokens",
    "variant",
}
REQUIRED = tuple(name for name in COLUMNS if name not in _NULLABLE)
_REQUIRED_VALUES = operator.itemgetter(*(COLUMNS.index(name) for name in REQUIRED))


# Columns added since journals were first written, in order: a row from before has none
# of them, or the first ones only.
LATER = ("attempts", "queued_ms", "cached_tokens", "variant")
_LATER_DEFAULTS = (0, None, None, None)  # `attempts` is then given by `_before_attempts`


def _before_attempts(row: UsageRow) -> UsageRow:
    """A row written before `attempts` was recorded: one call if it names an upstream."""
    return row._replace(attempts=1 if row.upstream is not None else 0)


def row_from_json(data: Any) -> UsageRow:
    """A row read back from the journal: an array in column order, or an object (journals
    written before arrays); ValueError when it is neither, or a required field is missing.
    A row written before the columns of `LATER` existed is read with their defaults."""
    if not isinstance(data, list):
        return UsageRow.from_dict(data)
    missing = len(COLUMNS) - len(data)
    if 0 < missing <= len(LATER):
        data = [*data, *_LATER_DEFAULTS[-missing:]]
    if len(data) != len(COLUMNS) or None in _REQUIRED_VALUES(data):
        raise ValueError("usage record with missing fields")
    row = UsageRow._make(data)
    return _before_attempts(row) if missing == len(LATER) else row


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def text(value: str | None) -> str | None:
    """Safe to store and serialise anywhere: capped, NUL and lone surrogates replaced."""
    if value is None:
        return None
    value = value[:MAX_TEXT]
    if value.isascii() and "\x00" not in value:  # the common case: one C-level scan
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def _tokens(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value >= 0 else 0


class RowBuilder:
    """Turns a finished request into a row; ids are unique across processes and restarts."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)
        self.default_price = self.prices.pop("*", None)
        # 64 random bits per process and a counter: no syscall per record.
        self._prefix = "u" + secrets.token_hex(8)
        self._counter = itertools.count(1)

    def build(self, ctx: RequestContext) -> UsageRow:
        now_perf, now_wall = time.perf_counter(), time.time()
        finished = ctx.finished if ctx.finished is not None else now_perf
        # ctx's timings are perf_counter values: anchor them to the wall clock once, here.
        started_at = now_wall - (now_perf - ctx.started)
        usage = ctx.usage or {}
        prompt, completion = _tokens(usage, "prompt_tokens"), _tokens(usage, "completion_tokens")
        disconnected = ctx.outcome == DISCONNECTED
        variant = ctx.variant
        # A variant's tokens cost what that model's do.
        price = self.prices.get(ctx.model or "", self.default_price)
        return UsageRow(
            id=f"{self._prefix}{next(self._counter):010x}",
            request_id=text(ctx.request_id),
            started_at=started_at,
            finished_at=started_at + (finished - ctx.started),
            principal=text(ctx.principal),
            key_id=text(ctx.key_id),
            subject=text(ctx.subject),
            tier=text(ctx.tier),
            model=text(ctx.model if variant is None else variant.asked),
            endpoint=ctx.endpoint,
            upstream=text(ctx.upstream),
            status=ctx.status or (CLIENT_CLOSED if disconnected else 0),
            outcome=text(ctx.outcome) or "",  # any outcome the core names, as it is
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached=ctx.cached,
            streamed=ctx.stream,
            disconnected=disconnected,
            latency_ms=round((finished - ctx.started) * 1000, 3),
            ttft_ms=(
                round((ctx.first_byte_at - ctx.started) * 1000, 3)
                if ctx.first_byte_at is not None
                else None
            ),
            cost=price.cost(prompt, completion, ctx.cached) if price is not None else 0.0,
            attempts=ctx.attempts,
            queued_ms=(
                round(ctx.queued_seconds * 1000, 3) if ctx.queued_seconds is not None else None
            ),
            cached_tokens=ctx.cached_tokens,
            variant=None if variant is None else text(variant.model),
        )
