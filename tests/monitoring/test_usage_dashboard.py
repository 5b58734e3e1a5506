"""Every panel of the usage dashboard, its SQL expanded as Grafana expands it, run against
PostgreSQL holding generated rows through the read-only role docs/operations.md creates:
each returns the numbers the rows hold, in the shape Grafana reads, through an index."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from statistics import fmean
from typing import Any

import asyncpg
import pytest

from monitoring.dashboard_kit import targets
from monitoring.grafana_sql import QueryTime, expand
from monitoring.usage_dashboard import OUTPUT
from tests.monitoring.usage_rows import (
    FROM,
    IN_RANGE,
    INTERVAL,
    TO,
    Row,
    bucket,
    error,
    groups,
    percentile_cont,
    series,
    tokens,
)

ROOT = Path(__file__).resolve().parents[2]
PANELS = {p["title"]: t for p, t in targets(json.loads(OUTPUT.read_text()))}
WHEN = QueryTime(FROM, TO, INTERVAL)
approx = pytest.approx


def top_spenders() -> list[tuple[Any, ...]]:
    everyone = sum(r.cost for r in IN_RANGE)
    lines = []
    for user, rows in groups(lambda r: r.subject).items():
        cost = sum(r.cost for r in rows)
        keys = len({r.key_id for r in rows if r.key_id is not None})
        used = sum(tokens(r) for r in rows)
        lines.append(
            (user or "(none)", keys, len(rows), used, approx(cost), approx(cost / everyone))
        )
    return sorted(lines, key=lambda line: (-line[4].expected, line[0]))[:20]


def error_shares() -> dict[Any, float]:
    found = {}
    for step, rows in groups(bucket).items():
        for outcome, of in groups(lambda r: r.outcome, rows).items():
            if outcome != "ok":
                found[step, outcome] = len(of) / len(rows)
    return found


def p95(column: str, streams_only: bool) -> dict[Any, float | None]:
    sent = [r for r in IN_RANGE if r.attempts > 0 and (r.streamed or not streams_only)]
    by_model = groups(lambda r: (bucket(r), r.model), sent)
    return {
        key: percentile_cont([getattr(r, column) for r in rows], 0.95)
        for key, rows in by_model.items()
    }


def variants() -> list[tuple[Any, ...]]:
    lines = []
    with_variant = groups(lambda r: (r.model, r.variant), [r for r in IN_RANGE if r.variant])
    for (model, variant), rows in sorted(with_variant.items()):
        sent = [r for r in rows if r.attempts > 0]
        latency = [r.latency_ms for r in sent]
        ttft = [r.ttft_ms for r in sent if r.ttft_ms is not None]
        cost = sum(r.cost for r in rows)
        numbers = (
            fmean(error(r) for r in rows),
            percentile_cont(latency, 0.5),
            percentile_cont(latency, 0.95),
            percentile_cont(ttft, 0.95),
            fmean(r.completion_tokens for r in rows),
            cost,
            cost / len(rows),
        )
        lines.append((model, variant, len(rows), *(approx(n) for n in numbers)))
    return lines


def cost(r: Row) -> float:
    return float(r.cost)


EXPECTED: dict[str, Any] = {
    "Cost": lambda: [(approx(sum(r.cost for r in IN_RANGE)),)],
    "Requests": lambda: [(len(IN_RANGE),)],
    "Tokens": lambda: [(sum(tokens(r) for r in IN_RANGE),)],
    "Error share": lambda: [(approx(fmean(error(r) for r in IN_RANGE)),)],
    **{
        f"{name} by {label}": (lambda v=value, c=column, t=top: approx(series(v, c, t)))
        for label, column, top in (
            ("tier", "tier", False),
            ("model", "model", True),
            ("user", "subject", True),
            ("key", "key_id", True),
        )
        for name, value in (("Cost", cost), ("Tokens", tokens))
    },
    "Top spenders": top_spenders,
    "Error share by outcome": lambda: approx(error_shares()),
    "p95 latency by model": lambda: approx(p95("latency_ms", streams_only=False)),
    "p95 time to first byte by model": lambda: approx(p95("ttft_ms", streams_only=True)),
    "Variants side by side": variants,
}


def number(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def as_grafana_reads(target: dict[str, Any], rows: list[asyncpg.Record]) -> Any:
    """A time series in Grafana's long format (time, metric, value; sorted by time) as
    {(time, metric): value}; a table as its rows."""
    if target["format"] == "table":
        return [tuple(number(v) for v in r.values()) for r in rows]
    assert all(list(r.keys()) == ["time", "metric", "value"] for r in rows)
    times = [r["time"] for r in rows]
    assert times == sorted(times), "Grafana needs a long-format series sorted by time"
    return {(float(r["time"]), r["metric"]): float(r["value"]) for r in rows}


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("title", list(PANELS))
async def test_panel_returns_what_the_rows_hold(
    reader: asyncpg.Connection[Any], title: str
) -> None:
    target = PANELS[title]
    rows = await reader.fetch(expand(target["rawSql"], WHEN))
    assert rows, f"{title}: no rows"
    assert as_grafana_reads(target, rows) == EXPECTED[title]()


def test_every_panel_has_its_expectation() -> None:
    assert set(PANELS) == set(EXPECTED)
