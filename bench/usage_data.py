"""Generated rows in `usage_records` for bench/usage_queries.py: the table of millions of
rows its plans read, and what more inserts cost the writer with and without an index."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from policies.usage.pg_insert import copy_batch
from policies.usage.record import COLUMNS, UsageRow

# Skewed callers (a few spend most), 5% of the traffic on a model with two variants.
LOAD = """
INSERT INTO usage_records (id, request_id, started_at, finished_at, principal, key_id,
    subject, tier, model, endpoint, upstream, status, outcome, prompt_tokens,
    completion_tokens, cached, streamed, disconnected, latency_ms, ttft_ms, cost, attempts,
    queued_ms, variant)
SELECT 'g' || (i + $6), 'r' || (i + $6), t, t + latency * interval '1 millisecond',
    'key:k' || k, 'k' || k, 'user' || (k % $3),
    (ARRAY['free', 'free', 'premium', NULL])[1 + k % 4],
    CASE WHEN m >= 1 - $7::float8 THEN 'chat-exp' WHEN m < 0.60 THEN 'chat'
         WHEN m < 0.85 THEN 'chat-large' ELSE 'embed' END,
    'chat.completions', CASE WHEN o < 0.04 THEN NULL ELSE 'http://127.0.0.1:808' || (i % 3) END,
    CASE WHEN o < 0.04 THEN 429 WHEN o < 0.05 THEN 502 WHEN o < 0.065 THEN 499 ELSE 200 END,
    CASE WHEN o < 0.04 THEN 'rejected' WHEN o < 0.05 THEN 'upstream_error'
         WHEN o < 0.065 THEN 'client_disconnected' ELSE 'ok' END,
    p, c, false, i % 2 = 0, o >= 0.05 AND o < 0.065, latency, latency / 8,
    (p * 0.1 + c * 0.4) / 1e6 * (1 + k % 3), CASE WHEN o < 0.04 THEN 0 ELSE 1 END,
    CASE WHEN o > 0.9 THEN o * 100 END,
    CASE WHEN m >= 1 - $7::float8 THEN (ARRAY['a', 'b'])[1 + i % 2] END
FROM (
    SELECT i, $1::timestamptz + (i - 1) * $2::interval AS t,
        floor(power(random(), 3) * $4)::int AS k, random() AS m, random() AS o,
        (20 + random() * 2000)::int AS p, (random() * 400)::int AS c,
        50 + power(random(), 2) * 5000 AS latency
    FROM generate_series(1::bigint, $5::bigint) AS i
) AS g
"""

# The table's size with its indexes: its partitions' (migration 008), or its own.
SIZE = """
SELECT pg_size_pretty(sum(pg_total_relation_size(oid))) FROM pg_class
WHERE oid = 'usage_records'::regclass
   OR oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'usage_records'::regclass)
"""


if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    Conn: TypeAlias = asyncpg.Connection[Any]


def recursive(indexdef: str) -> str:
    """An index's definition that builds it on every partition too: a partitioned table's
    indexes read `ON ONLY`, which would make the parent's alone."""
    return indexdef.replace(" ON ONLY ", " ON ", 1)


async def fill(
    conn: Conn, rows: int, span: timedelta, end: datetime, first: int = 0, variants: float = 0.05
) -> None:
    """`rows` rows over the `span` before `end`, `variants` of them on a model with variants."""
    await conn.execute("SELECT setseed(0.42)")
    await conn.execute(LOAD, end - span, span / rows, 2000, 3000, rows, first, variants)


async def load(conn: Conn, rows: int, days: int, end: datetime) -> None:
    """Rows loaded with the indexes dropped, then the indexes built: faster than keeping
    them up to date row by row, and the same table in the end."""
    began = time.perf_counter()
    # The months of the rows, made ahead as the writer would have made them.
    await conn.execute(
        "SELECT usage_partition(day::date) FROM generate_series($1::date, $2::date,"
        " interval '1 month') AS day",
        (end - timedelta(days=days)).date(),
        (end + timedelta(days=1)).date(),
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
        " AND tablename = 'usage_records' AND indexname <> 'usage_records_pkey'"
    )
    for index in indexes:
        await conn.execute(f"DROP INDEX {index['indexname']}")
    await fill(conn, rows, timedelta(days=days), end)
    for index in indexes:
        await conn.execute(recursive(index["indexdef"]))
    await conn.execute("VACUUM ANALYZE usage_records")
    size = await conn.fetchval(SIZE)
    print(f"{rows:,} rows over {days} days in {time.perf_counter() - began:.0f} s ({size})")


def writer_rows(first: int, count: int, at: float) -> list[UsageRow]:
    """Rows as the writer gets them; columns not named here are NULL."""
    rows = []
    for n in range(first, first + count):
        values: dict[str, Any] = {
            **WRITER_ROW,
            "id": f"w{n:012x}",
            "request_id": f"q{n:012x}",
            "started_at": at + n * 0.001,
            "finished_at": at + n * 0.001 + 0.3,
            "principal": f"key:k{n % 3000}",
            "key_id": f"k{n % 3000}",
            "subject": f"user{n % 2000}",
        }
        rows.append(UsageRow._make(values.get(name) for name in COLUMNS))
    return rows


WRITER_ROW = {
    "tier": "free",
    "model": "chat",
    "endpoint": "chat.completions",
    "upstream": "http://127.0.0.1:8080",
    "status": 200,
    "outcome": "ok",
    "prompt_tokens": 120,
    "completion_tokens": 80,
    "cached": False,
    "streamed": True,
    "disconnected": False,
    "latency_ms": 900.0,
    "ttft_ms": 60.0,
    "cost": 0.0001,
    "attempts": 1,
}


async def set_indexes(conn: Conn, definitions: dict[str, str], present: bool) -> None:
    for name, definition in definitions.items():
        await conn.execute(definition if present else f"DROP INDEX {name}")
    await conn.execute("VACUUM ANALYZE usage_records")


async def per_row(batches: list[Any], insert: Callable[[Any], Awaitable[int]]) -> float:
    """Microseconds per row to insert `batches` one after the other."""
    began, rows = time.perf_counter(), 0
    for batch in batches:
        rows += await insert(batch)
    return (time.perf_counter() - began) / rows * 1e6


async def one_round(
    conn: Conn, pool: asyncpg.Pool[Any], first: int, batches: int
) -> dict[str, float]:
    """µs per row: the writer's COPY batches (rows without a variant, as the writer
    writes them today), and SQL batches whose every row names a variant."""
    at = time.time()
    rows = [writer_rows(first + i * 500, 500, at) for i in range(batches)]

    async def variant_batch(start: int) -> int:
        await fill(conn, 500, timedelta(seconds=1), datetime.now(UTC), start, variants=1.0)
        return 500

    starts = [10**9 + first + i * 500 for i in range(batches)]
    return {
        "writer, no variant": await per_row(rows, lambda batch: copy_batch(pool, batch)),
        "rows with a variant": await per_row(starts, variant_batch),
    }


async def insert_rounds(
    conn: Conn, dsn: str, definitions: dict[str, str], args: argparse.Namespace
) -> dict[bool, list[dict[str, float]]]:
    """Rounds with and without the indexes, alternating: {present: [round's figures]}."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    found: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    try:
        for n in range(args.rounds * 2):
            present = n % 2 == 1
            await set_indexes(conn, definitions, present)
            found[present].append(await one_round(conn, pool, n * 500 * args.batches, args.batches))
    finally:
        await pool.close()
    return found


async def insert_cost(conn: Conn, dsn: str, names: list[str], args: argparse.Namespace) -> None:
    """What the indexes `names` cost each insert, in batches of 500 rows."""
    definitions = {
        row["indexname"]: recursive(row["indexdef"])
        for row in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname = ANY($1::text[])",
            names,
        )
    }
    found = await insert_rounds(conn, dsn, definitions, args)
    print(f"insert cost of {', '.join(names)} (µs per row, median of {args.rounds} rounds):")
    for path in found[True][0]:
        with_, without = (statistics.median(r[path] for r in found[p]) for p in (True, False))
        print(
            f"  {path:<22} without {without:7.1f}  with {with_:7.1f}"
            f"  difference {with_ - without:+7.1f} ({(with_ / without - 1) * 100:+.0f}%)"
        )
