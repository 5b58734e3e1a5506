"""The `attempts`, `queued_ms`, `cached_tokens` and `variant` columns: rows journalled or
stored before they existed stay readable."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway.db import migrate_postgres, open_sqlite
from policies.usage.record import COLUMNS, row_from_json
from policies.usage.schema import migrations
from tests.support.usage import row

INSERT = (
    "INSERT INTO usage_records (id, started_at, finished_at, endpoint, upstream, status,"
    " outcome, prompt_tokens, completion_tokens, cached, streamed, disconnected, latency_ms,"
    " cost) VALUES ('{id}', '2026-01-01T00:00:00.000000+00:00',"
    " '2026-01-01T00:00:01.000000+00:00', 'chat.completions', {upstream}, 200, 'ok', 1, 1,"
    " false, false, false, 1.0, 0)"
)


@pytest.mark.parametrize("upstream", ["http://u", None])
def test_a_journal_row_from_before_attempts_is_read(upstream: str | None) -> None:
    earlier = row(1, upstream=upstream).as_dict()
    del earlier["attempts"], earlier["queued_ms"], earlier["cached_tokens"], earlier["variant"]
    expected = 1 if upstream else 0
    as_array = orjson.loads(orjson.dumps(list(earlier.values())))
    assert len(as_array) == len(COLUMNS) - 4
    assert row_from_json(as_array).attempts == expected
    assert row_from_json(earlier).attempts == expected
    assert row_from_json(as_array).queued_ms is None
    assert row_from_json(as_array).cached_tokens is None
    assert row_from_json(as_array).variant is None
    assert row_from_json(list(row(2, attempts=3))).attempts == 3


def test_a_journal_row_from_before_queued_ms_is_read() -> None:
    earlier = list(row(1, attempts=2))[:-3]
    read = row_from_json(orjson.loads(orjson.dumps(earlier)))
    assert (read.attempts, read.queued_ms, read.cached_tokens) == (2, None, None)
    assert row_from_json(list(row(2, queued_ms=12.5))).queued_ms == 12.5


def test_a_journal_row_from_before_cached_tokens_is_read() -> None:
    earlier = list(row(1, attempts=2, queued_ms=3.5))[:-2]
    read = row_from_json(orjson.loads(orjson.dumps(earlier)))
    assert (read.attempts, read.queued_ms, read.cached_tokens) == (2, 3.5, None)
    assert row_from_json(list(row(2, cached_tokens=607))).cached_tokens == 607
    as_object = row(3, cached_tokens=5).as_dict()
    del as_object["cached_tokens"]
    assert row_from_json(as_object).cached_tokens is None


def test_a_journal_row_from_before_variant_is_read() -> None:
    earlier = list(row(1, attempts=2, queued_ms=3.0, cached_tokens=7))[:-1]
    read = row_from_json(orjson.loads(orjson.dumps(earlier)))
    assert (read.attempts, read.queued_ms, read.cached_tokens, read.variant) == (2, 3.0, 7, None)
    assert row_from_json(list(row(2, variant="m-q8"))).variant == "m-q8"


def test_a_short_or_incomplete_journal_row_is_still_refused() -> None:
    values = list(row(1))
    with pytest.raises(ValueError, match="missing fields"):
        row_from_json(values[:-5])
    values[COLUMNS.index("status")] = None
    with pytest.raises(ValueError, match="missing fields"):
        row_from_json(values[:-1])


def before_attempts() -> list[tuple[int, str, str]]:
    """The schema as it was before the `attempts` column (later migrations may use it)."""
    attempts = next(m.version for m in migrations() if m.name == "attempts")
    return [m for m in migrations() if m.version < attempts]


async def test_sqlite_rows_stored_before_count_one_call_if_relayed(tmp_path: Path) -> None:
    db = await open_sqlite(tmp_path / "usage.db", migrations=before_attempts())
    try:
        await db.execute(INSERT.format(id="a", upstream="'http://u'"))
        await db.execute(INSERT.format(id="b", upstream="NULL"))
    finally:
        await db.close()
    db = await open_sqlite(tmp_path / "usage.db", migrations=migrations())
    try:
        rows = await db.execute_fetchall(
            "SELECT id, attempts, cached_tokens FROM usage_records ORDER BY id"
        )
    finally:
        await db.close()
    assert [tuple(r) for r in rows] == [("a", 1, None), ("b", 0, None)]


async def test_postgres_rows_stored_before_count_one_call_if_relayed(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await migrate_postgres(conn, before_attempts())
        await conn.execute(INSERT.format(id="a", upstream="'http://u'"))
        await conn.execute(INSERT.format(id="b", upstream="NULL"))
        await migrate_postgres(conn, migrations())
        rows = await conn.fetch("SELECT id, attempts, cached_tokens FROM usage_records ORDER BY id")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("a", 1, None), ("b", 0, None)]
