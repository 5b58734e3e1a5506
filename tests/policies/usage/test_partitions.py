"""`usage_records` partitioned by month on PostgreSQL (migration 008): the rows of a table
from before move in whole, the writer makes partitions ahead and drops those past the
retention, and a failing upkeep never stands in the way of the rows. SQLite: retention
deletes the rows."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.db import migrate_postgres
from policies.usage.schema import migrations
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore
from policies.usage.upkeep import months_ahead
from tests.support.usage import row

DAY = 86400.0


def month_name(moment: datetime) -> str:
    return f"usage_records_{moment:%Y_%m}"


def days_ago(days: float) -> float:
    return datetime.now(UTC).timestamp() - days * DAY


async def partitions(conn: asyncpg.Connection) -> dict[str, int]:
    """Each partition's row count."""
    names = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_records'::regclass"
    )
    return {r[0]: await conn.fetchval(f"SELECT count(*) FROM {r[0]}") for r in names}


async def test_rows_from_before_move_into_month_partitions_with_their_indexes(
    pg_url: str,
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        before = [m for m in migrations() if m.version < 8]
        await migrate_postgres(conn, before)
        old = [row(n, started_at=days_ago(40 * n)) for n in range(4)]  # four months back
        for r in old:
            await conn.execute(
                "INSERT INTO usage_records (id, started_at, finished_at, endpoint, status,"
                " outcome, prompt_tokens, completion_tokens, cached, streamed, disconnected,"
                " latency_ms, cost) VALUES ($1, to_timestamp($2), to_timestamp($2),"
                " 'chat.completions', 200, 'ok', 1, 1, false, false, false, 1, 0)",
                r.id,
                r.started_at,
            )
        await migrate_postgres(conn, migrations())
        found = await partitions(conn)
        now = datetime.now(UTC)
        for r in old:
            assert found[month_name(datetime.fromtimestamp(r.started_at, UTC))] >= 1
        for month in months_ahead(now.date()):
            assert month_name(datetime(month.year, month.month, 1)) in found
        assert found["usage_records_default"] == 0
        assert sum(found.values()) == 4
        ids = await conn.fetch("SELECT id FROM usage_records ORDER BY id")
        assert [r[0] for r in ids] == sorted(r.id for r in old)
        indexes = {
            r[0]
            for r in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_records'"
            )
        }
        assert {
            "usage_records_pkey",
            "usage_records_started_at",
            "usage_records_key_id",
            "usage_records_subject",
            "usage_records_request_id",
        } <= indexes
    finally:
        await conn.close()


async def test_retention_drops_whole_months_and_keeps_the_rest(pg_url: str) -> None:
    store = PostgresUsageStore(pg_url, retention_days=70)
    await store.connect()
    try:
        rows = [row(n, started_at=days_ago(days)) for n, days in enumerate((0, 10, 100, 200))]
        assert await store.insert(rows) == 4  # the first batch: upkeep ran before it
        store.upkeep.due_at = 0  # again, now that there are old months
        assert await store.insert([row(9, started_at=days_ago(1))]) == 1
        assert store.pool is not None
        async with store.pool.acquire() as conn:
            kept = {r[0] for r in await conn.fetch("SELECT id FROM usage_records")}
            found = await partitions(conn)
        # The 100- and 200-day-old rows' months ended before the cutoff (70 days ago).
        assert kept == {"id-0", "id-1", "id-9"}
        cutoff = datetime.now(UTC) - timedelta(days=70)
        for name in found:
            if name != "usage_records_default":
                year, month = map(int, name.rsplit("_", 2)[1:])
                end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
                assert end > cutoff, name
    finally:
        await store.close()


async def test_a_failing_upkeep_never_stands_in_the_way_of_the_rows(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresUsageStore(pg_url)
    await store.connect()
    try:
        assert store.pool is not None
        last = months_ahead(datetime.now(UTC).date())[-1]
        late = datetime(last.year, last.month, 2, tzinfo=UTC).timestamp()
        async with store.pool.acquire() as conn:
            # That month's partition gone, and a row of it in the default partition: the
            # partition cannot be made again while the row is there.
            await conn.execute(f"DROP TABLE {month_name(datetime(last.year, last.month, 1))}")
        store.upkeep.due_at = float("inf")
        assert await store.insert([row(1, started_at=late)]) == 1
        store.upkeep.due_at = 0
        with caplog.at_level(logging.WARNING, "policies.usage.store"):
            assert await store.insert([row(2), row(3, started_at=late)]) == 2
        assert "partition upkeep failed" in caplog.text
        async with store.pool.acquire() as conn:
            assert (await partitions(conn))["usage_records_default"] == 2
            assert await conn.fetchval("SELECT count(*) FROM usage_records") == 3
    finally:
        await store.close()


async def test_sqlite_retention_deletes_the_rows_past_it(tmp_path: Path) -> None:
    store = SqliteUsageStore(tmp_path / "usage.db", retention_days=30)
    await store.connect()
    try:
        assert await store.insert([row(1, started_at=days_ago(40)), row(2)]) == 2
        store.upkeep.due_at = 0
        assert await store.insert([row(3)]) == 1
        conn = store.conn
        assert conn is not None
        ids = await conn.execute_fetchall("SELECT id FROM usage_records ORDER BY id")
        assert [r[0] for r in ids] == ["id-2", "id-3"]
    finally:
        await store.close()
