"""Batch inserts into PostgreSQL, by COPY through a staging table or (for roles that may not
create temporary tables) by arrays: whole batches, every value as given, no duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from policies.usage.record import UsageRow, utc
from policies.usage.store import PostgresUsageStore
from tests.support.usage import pg_rows, row

MICROSECOND = timedelta(microseconds=1)


@pytest.fixture(params=["copy", "arrays"])
async def store(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[PostgresUsageStore]:
    pg = PostgresUsageStore(pg_url)
    pg.staging = request.param == "copy"
    await pg.connect()
    try:
        yield pg
    finally:
        await pg.close()


def varied(n: int) -> UsageRow:
    """A row with NULLs, unicode, a fraction of a microsecond and extreme numbers."""
    return row(
        n,
        request_id=None if n % 2 else f"réq-{n}-✓",
        started_at=1_700_000_000.123456789 + n,
        finished_at=1_700_000_000.9999996 + n,
        principal=None,
        key_id=None,
        subject="" if n % 3 else "ünïcode",
        tier=None,
        status=499,
        outcome="disconnected",
        prompt_tokens=2**31 - 1,
        completion_tokens=0,
        cached=bool(n % 2),
        streamed=True,
        disconnected=True,
        latency_ms=0.001,
        ttft_ms=None if n % 2 else 12.345,
        cost=1e-12,
        attempts=n % 4,
        cached_tokens=None if n % 2 else [0, 2**31 - 1, 607][n % 3],
    )


async def test_every_value_of_a_batch_is_stored_as_given(
    store: PostgresUsageStore, pg_url: str
) -> None:
    batch = [varied(n) for n in range(6)]
    assert await store.insert(batch) == 6
    stored = await pg_rows(pg_url)
    assert len(stored) == 6
    for got, sent in zip(stored, sorted(batch, key=lambda r: r.id), strict=True):
        expected: dict[str, Any] = sent.as_dict()
        for time in ("started_at", "finished_at"):
            # The database keeps microseconds: at most half of one off the epoch seconds.
            assert abs(got.pop(time) - utc(expected.pop(time))) <= MICROSECOND
        assert got == expected


async def test_a_replayed_batch_adds_only_the_rows_not_stored_yet(
    store: PostgresUsageStore, pg_url: str
) -> None:
    assert await store.insert([row(n) for n in range(5)]) == 5
    assert await store.insert([row(n) for n in range(5)]) == 0
    assert await store.insert([row(n) for n in range(3, 9)]) == 4
    assert [r["id"] for r in await pg_rows(pg_url)] == [f"id-{n}" for n in range(9)]


async def test_a_row_twice_in_one_batch_is_stored_once(
    store: PostgresUsageStore, pg_url: str
) -> None:
    assert await store.insert([row(1), row(2), row(1, status=500)]) == 2
    assert [(r["id"], r["status"]) for r in await pg_rows(pg_url)] == [
        ("id-1", 200),
        ("id-2", 200),
    ]


@pytest.mark.parametrize(
    "bad",
    [{"status": 2**40}, {"latency_ms": "slow"}, {"started_at": float("nan")}, {"id": None}],
    ids=["integer-overflow", "text-for-a-number", "nan-time", "no-id"],
)
async def test_a_batch_with_a_value_no_column_takes_stores_nothing(
    store: PostgresUsageStore, pg_url: str, bad: dict[str, Any]
) -> None:
    batch = [row(1), row(2, **bad), row(3)]
    with pytest.raises(asyncpg.DataError if "id" not in bad else asyncpg.NotNullViolationError):
        await store.insert(batch)
    assert await pg_rows(pg_url) == []
    # Nothing of the failed batch lingers for the next one to carry along.
    assert await store.insert([row(4)]) == 1
    assert [r["id"] for r in await pg_rows(pg_url)] == ["id-4"]


async def test_batches_on_several_connections_at_once_are_all_stored(
    store: PostgresUsageStore, pg_url: str
) -> None:
    batches = [[row(b * 100 + n) for n in range(50)] for b in range(8)]
    counts = await asyncio.gather(*(store.insert(batch) for batch in batches))
    assert counts == [50] * 8
    assert len(await pg_rows(pg_url)) == 400


async def test_copy_leaves_its_staging_table_empty_on_the_connection(pg_url: str) -> None:
    store = PostgresUsageStore(pg_url)
    await store.connect()
    try:
        assert await store.insert([row(n) for n in range(3)]) == 3
        assert store.staging
        assert store.pool is not None
        async with store.pool.acquire() as conn:  # the one connection the pool has opened
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.usage_staging") == 0
    finally:
        await store.close()
