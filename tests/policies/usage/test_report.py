"""Reports: the same figures from PostgreSQL and from the embedded SQLite store."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policies.usage.report import ReportError, ReportRow, format_table, parse_time
from policies.usage.schema import StoreUnavailable
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore, UsageStore
from tests.support.usage import NOW, ROWS, row


@pytest.fixture
async def stores(pg_url: str, tmp_path: Path) -> AsyncIterator[list[UsageStore]]:
    opened: list[UsageStore] = [PostgresUsageStore(pg_url), SqliteUsageStore(tmp_path / "u.db")]
    for store in opened:
        await store.connect()
        await store.insert(ROWS)
    yield opened
    for store in opened:
        await store.close()


def expected(latencies: list[float], q: int) -> float:
    """percentile_cont: linear interpolation between the closest ranks."""
    return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1]


async def test_both_stores_report_the_same_figures_by_model(stores: list[UsageStore]) -> None:
    m2 = [3.5, 8.0, 1.25, 40.0, 2.0, 9.0, 7.0]
    for store in stores:
        rows, total = await store.report(NOW - timedelta(hours=1), NOW, "model")
        assert [r.group for r in rows] == ["m1", "m2"], store.dependency
        m1_row, m2_row = rows
        assert (m1_row.requests, m1_row.prompt_tokens, m1_row.completion_tokens) == (20, 200, 100)
        assert (m1_row.errors, m1_row.cost) == (1, pytest.approx(5.0))
        assert m1_row.p50_ms == pytest.approx(10.5)
        assert m1_row.p95_ms == pytest.approx(expected([float(n) for n in range(1, 21)], 95))
        assert (m2_row.requests, m2_row.errors, m2_row.cost) == (7, 2, pytest.approx(7.0))
        assert m2_row.p50_ms == pytest.approx(7.0)
        assert m2_row.p95_ms == pytest.approx(expected(m2, 95))
        assert (total.group, total.requests, total.errors) == ("all", 27, 3)


async def test_callers_without_a_key_form_their_own_group(stores: list[UsageStore]) -> None:
    for store in stores:
        rows, _ = await store.report(NOW - timedelta(hours=1), NOW, "key")
        assert [(r.group, r.requests) for r in rows] == [("aaa", 20), (None, 7)]
        users, _ = await store.report(NOW - timedelta(hours=1), NOW, "user")
        assert [(r.group, r.requests) for r in users] == [("alice", 20), ("bob", 7)]


async def test_the_time_range_decides_which_rows_count(stores: list[UsageStore]) -> None:
    for store in stores:
        _, week = await store.report(NOW - timedelta(days=7), NOW, None)
        assert week.requests == 28
        _, empty = await store.report(NOW - timedelta(days=30), NOW - timedelta(days=10), None)
        assert (empty.requests, empty.cost, empty.p50_ms) == (0, 0.0, None)


async def test_inserting_the_same_rows_again_adds_nothing(stores: list[UsageStore]) -> None:
    for store in stores:
        assert await store.insert(ROWS[:5]) == 0
        _, total = await store.report(NOW - timedelta(days=7), NOW, None)
        assert total.requests == 28


async def test_an_unknown_grouping_is_refused_with_the_choices(stores: list[UsageStore]) -> None:
    for store in stores:
        with pytest.raises(ReportError, match="key, user, tier, model"):
            await store.report(NOW - timedelta(hours=1), NOW, "colour")


async def test_a_database_without_the_table_says_to_migrate(pg_url: str) -> None:
    store = PostgresUsageStore(pg_url)
    await store.connect(migrate=False)
    try:
        with pytest.raises(StoreUnavailable, match="llama-gateway db migrate"):
            await store.report(NOW - timedelta(hours=1), NOW, None)
    finally:
        await store.close()


def test_time_ranges_accept_durations_and_iso_dates() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now) == now - timedelta(hours=24)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("2w", now) == now - timedelta(weeks=2)
    assert parse_time("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ReportError, match="24h"):
        parse_time("yesterday", now)


def test_the_table_has_a_line_per_group_and_a_total() -> None:
    rows = [ReportRow("m1", 1200, 5000, 700, 2000, 3, 1.5, 12.25, 80.0, 4.0, 9.5)]
    total = ReportRow("all", 1200, 5000, 700, 2000, 3, 1.5, 12.25, 80.0)
    lines = format_table(rows, total, "model", NOW, NOW).splitlines()
    assert lines[1].split() == [
        "MODEL",
        "REQUESTS",
        "PROMPT",
        "TOK",
        "CACHED",
        "COMPL",
        "TOK",
        "ERRORS",
        "COST",
        "P50",
        "MS",
        "P95",
        "MS",
        "TTFT",
        "P50",
        "TTFT",
        "P95",
    ]
    assert lines[2].split() == [
        "m1",
        "1,200",
        "5,000",
        "40.0%",
        "700",
        "3",
        "1.5000",
        "12.2",
        "80.0",
        "4.0",
        "9.5",
    ]
    assert lines[3].split()[1:] == [*lines[2].split()[1:-2], "-", "-"]  # the total's TTFT unknown


async def test_a_client_hanging_up_is_no_error(stores: list[UsageStore]) -> None:
    gone = row(500, model="m3", status=499, outcome="client_disconnected", disconnected=True)
    failed = row(501, model="m3", status=502, outcome="upstream_error")
    for store in stores:
        await store.insert([gone, failed])
        rows, _ = await store.report(NOW - timedelta(hours=1), NOW, "model")
        m3 = next(r for r in rows if r.group == "m3")
        assert (m3.requests, m3.errors) == (2, 1)


async def test_an_internal_error_of_the_gateway_counts_as_an_error(
    stores: list[UsageStore],
) -> None:
    broken = row(550, model="m4", status=500, outcome="internal_error")
    served = row(551, model="m4")
    for store in stores:
        await store.insert([broken, served])
        rows, _ = await store.report(NOW - timedelta(hours=1), NOW, "model")
        m4 = next(r for r in rows if r.group == "m4")
        assert (m4.requests, m4.errors) == (2, 1)


async def test_both_stores_sum_the_cached_prompt_tokens_reported(
    stores: list[UsageStore],
) -> None:
    reported = [row(300, model="m5", cached_tokens=7), row(301, model="m5", cached_tokens=0)]
    silent = row(302, model="m5")  # an upstream that did not say: NULL, counted as none
    for store in stores:
        await store.insert([*reported, silent])
        rows, total = await store.report(NOW - timedelta(hours=1), NOW, "model")
        m5 = next(r for r in rows if r.group == "m5")
        assert (m5.prompt_tokens, m5.cached_tokens) == (30, 7), store.dependency
        assert total.cached_tokens == 7
        assert next(r for r in rows if r.group == "m1").cached_tokens == 0


def test_the_table_shows_no_cached_share_without_prompt_tokens() -> None:
    empty = ReportRow("all", 0, 0, 0, 0, 0, 0.0, None, None)
    assert format_table([], empty, None, NOW, NOW).splitlines()[2].split()[3] == "-"
