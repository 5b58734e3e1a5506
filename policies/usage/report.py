"""Usage reports: requests, tokens, errors, cost, and percentiles of latency and time to first
token, per group and time range.

The stores compute them in SQL (PostgreSQL's `percentile_cont`, the same interpolation
on SQLite with window functions); this module holds what both share: the groupings,
the time-range syntax and the renderings (a table for the CLI, JSON for the admin API).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# `--by` names -> the column they group by.
GROUPS = {
    "key": "key_id",
    "user": "subject",
    "tier": "tier",
    "model": "model",
    "principal": "principal",
    "endpoint": "endpoint",
    "variant": "variant",
}
# Errors: requests refused (by the gateway or a policy) and upstream failures, streams the
# upstream broke off after a 200 included. A client hanging up is no error.
ERROR_CONDITION = "outcome IN ('rejected', 'upstream_error', 'internal_error')"
PERCENTILES = (0.5, 0.95)
# What the percentiles are of: the whole answer, and its first byte (rows that have one).
TIMINGS = ("latency_ms", "ttft_ms")
# The sums of a report line, in ReportRow's order, as both stores' SQL computes them.
SUMS = (
    "count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
    " coalesce(sum(cached_tokens), 0),"
    f" coalesce(sum(CASE WHEN {ERROR_CONDITION} THEN 1 ELSE 0 END), 0), coalesce(sum(cost), 0)"
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ReportError(ValueError):
    """A report parameter that cannot be used; the message says what to send instead."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ReportRow:
    group: str | None  # None: callers without a key, user or tier; "total" rows have "all"
    requests: int
    prompt_tokens: int
    completion_tokens: int
    # Of the prompt tokens, those the upstreams took from their prompt cache (as reported).
    cached_tokens: int
    errors: int
    cost: float
    p50_ms: float | None
    p95_ms: float | None
    # Time to the first byte (a stream's first event), of the requests an upstream answered.
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None


def parse_time(value: str, now: datetime | None = None, param: str | None = None) -> datetime:
    """`24h`, `30m`, `7d`, `2w` (that long ago) or an ISO date/time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    named = f"{param}: " if param else ""
    match = _DURATION.match(value.strip())
    try:
        if match:
            return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
        moment = datetime.fromisoformat(value.strip())
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # an offset that pushes it out of datetime's range
    except OverflowError as exc:
        raise ReportError(
            f"{named}{value!r} reaches outside the years 1 to 9999: give a shorter duration "
            "or a date within them",
            param,
        ) from exc
    except ValueError as exc:
        raise ReportError(
            f"{named}{value!r} is not a time: give a duration like 24h, 30m, 7d, 2w "
            "or an ISO date like 2026-11-01T00:00",
            param,
        ) from exc
    return moment


def sort_groups(rows: list[ReportRow]) -> list[ReportRow]:
    """The busiest groups first; callers without a group after those with one."""
    return sorted(rows, key=lambda r: (-r.requests, r.group is None, r.group or ""))


def group_column(by: str | None) -> str | None:
    if by is None:
        return None
    column = GROUPS.get(by)
    if column is None:
        raise ReportError(f"by: cannot group by {by!r}: use one of {', '.join(GROUPS)}", "by")
    return column


def interpolate(low: float | None, high: float | None, n: int, q: float) -> float | None:
    """percentile_cont from the two neighbours around position q * (n - 1)."""
    if low is None:
        return None
    position = q * (n - 1)
    fraction = position - math.floor(position)
    if high is None or fraction == 0:
        return low
    return low + (high - low) * fraction


def as_json(
    rows: list[ReportRow], total: ReportRow, since: datetime, until: datetime, by: str | None
) -> dict[str, Any]:
    return {
        "object": "usage.report",
        "since": since.isoformat(),
        "until": until.isoformat(),
        "by": by,
        "data": [asdict(row) for row in rows],
        "total": asdict(total),
    }


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def format_table(
    rows: list[ReportRow], total: ReportRow, by: str | None, since: datetime, until: datetime
) -> str:
    head = (by or "all").upper()
    header = [head, "REQUESTS", "PROMPT TOK", "CACHED", "COMPL TOK", "ERRORS", "COST"]
    header += ["P50 MS", "P95 MS", "TTFT P50", "TTFT P95"]
    lines = [[*_cells(row)] for row in rows] if by else []
    if by:
        lines.append(["TOTAL", *_cells(total)[1:]])
    else:
        lines.append(["all", *_cells(total)[1:]])
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in [header, *lines]
    ]
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    span = f"usage from {since:%Y-%m-%d %H:%M:%S} to {until:%Y-%m-%d %H:%M:%S} UTC"
    return "\n".join([span, *rendered])


def _cells(row: ReportRow) -> list[str]:
    return [
        "-" if row.group is None else row.group,
        f"{row.requests:,}",
        f"{row.prompt_tokens:,}",
        _share(row.cached_tokens, row.prompt_tokens),
        f"{row.completion_tokens:,}",
        f"{row.errors:,}",
        _number(row.cost, 4),
        _number(row.p50_ms, 1),
        _number(row.p95_ms, 1),
        _number(row.ttft_p50_ms, 1),
        _number(row.ttft_p95_ms, 1),
    ]
