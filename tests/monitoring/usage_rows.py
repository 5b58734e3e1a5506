"""Generated usage rows, and what each panel of the usage dashboard must answer over them,
computed here in Python from the rows themselves (not from the panels' SQL)."""

from __future__ import annotations

import math
from collections import defaultdict, namedtuple
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
# The dashboard's time range and interval in the test: rows before and after it too.
FROM, TO = START + timedelta(minutes=15), START + timedelta(minutes=105)
INTERVAL = timedelta(minutes=30)
ERRORS = {"rejected", "upstream_error", "internal_error"}
PRICES = {"chat": (1.0, 3.0), "chat-large": (4.0, 12.0), "chat-exp": (2.0, 5.0)}
TOP = 10


# The columns the rows fill (the others stay NULL): the test's own list, so that columns
# added to the table later change nothing here.
COLUMNS = (
    "id",
    "started_at",
    "finished_at",
    "principal",
    "key_id",
    "subject",
    "tier",
    "model",
    "endpoint",
    "upstream",
    "status",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "cached",
    "streamed",
    "disconnected",
    "latency_ms",
    "ttft_ms",
    "cost",
    "attempts",
    "variant",
)
Row = namedtuple("Row", COLUMNS)  # type: ignore[misc]


def tokens(r: Row) -> int:
    return int(r.prompt_tokens + r.completion_tokens)


def error(r: Row) -> float:
    return 1.0 if r.outcome in ERRORS else 0.0


def outcome(i: int) -> str:
    if i % 20 == 0:
        return "rejected"
    if i % 20 == 7:
        return "upstream_error"
    if i % 20 == 13:
        return "client_disconnected"
    return "internal_error" if i % 37 == 3 else "ok"


def row(i: int) -> Row:
    """Row `i`, 30 seconds after row `i - 1`: callers, models and outcomes in cycles."""
    started = START + timedelta(seconds=30 * i)
    result = outcome(i)
    model = ("chat", "chat", "chat-large", "chat-exp")[i % 4]
    cached = result == "ok" and i % 23 == 5
    attempts = 0 if result == "rejected" or cached else 2 if result == "upstream_error" else 1
    answered = result in ("ok", "client_disconnected")
    prompt, completion = 10 + (i * 37) % 200, (i * 53) % 150 if answered else 0
    latency = 20.0 + (i * 7919) % 3000 / 3
    key = None if i % 17 == 0 else f"k{(i * 3) % 14}"
    return Row(
        id=f"row{i:05d}",
        started_at=started,
        finished_at=started + timedelta(milliseconds=latency),
        principal=None if key is None else f"key:{key}",
        key_id=key,
        subject=None if i % 11 == 0 else f"user{(i * 5) % 13}",
        tier=("free", "premium", None)[i % 3],
        model=model,
        endpoint="chat.completions",
        upstream=None if attempts == 0 else "http://127.0.0.1:8081",
        status={"rejected": 429, "upstream_error": 502, "client_disconnected": 499}.get(
            result, 500 if result == "internal_error" else 200
        ),
        outcome=result,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached=cached,
        streamed=i % 5 in (0, 2, 3),
        disconnected=result == "client_disconnected",
        latency_ms=latency,
        ttft_ms=latency / 4 if i % 5 in (0, 2, 3) and attempts > 0 else None,
        cost=0.0 if result == "rejected" else price(model, prompt, completion),
        attempts=attempts,
        # An experiment's rows name it as their model, and the model that served them.
        variant=("chat", "chat-large")[(i // 4) % 2] if model == "chat-exp" else None,
    )


def price(model: str, prompt: int, completion: int) -> float:
    per_prompt, per_completion = PRICES[model]
    return (prompt * per_prompt + completion * per_completion) / 1e6


ROWS = [row(i) for i in range(240)]  # 10:00 to 12:00
IN_RANGE = [r for r in ROWS if FROM <= r.started_at <= TO]


def records() -> list[tuple[Any, ...]]:
    return [tuple(r) for r in ROWS]


def bucket(r: Row) -> float:
    step = INTERVAL.total_seconds()
    return math.floor(r.started_at.timestamp() / step) * step


def percentile_cont(values: Iterable[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont: linear between the two values around q * (n - 1)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def series(value: Callable[[Row], float], column: str, top: bool) -> dict[Any, float]:
    """{(bucket, series name): sum of value}: a column's values, the top ones with `top`."""
    totals: dict[str, float] = defaultdict(float)
    for r in IN_RANGE:
        if getattr(r, column) is not None:
            totals[getattr(r, column)] += value(r)
    kept = sorted(totals, key=lambda name: (-totals[name], name))[:TOP] if top else totals

    def label(r: Row) -> str:
        name = getattr(r, column)
        return "(none)" if name is None else name if name in kept else "(others)"

    found: dict[Any, float] = defaultdict(float)
    for r in IN_RANGE:
        found[bucket(r), label(r)] += value(r)
    return dict(found)


def groups(key: Callable[[Row], Any], rows: Iterable[Row] = IN_RANGE) -> dict[Any, list[Row]]:
    found: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        found[key(r)].append(r)
    return found
