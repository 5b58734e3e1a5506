"""The usage report over the last 24 hours with a usage table of many rows (50 million by
default), as `llama-gateway usage --since 24h` runs it, on PostgreSQL with the table
partitioned by month (migration 008).

It creates a database of its own (dropped at the end unless --keep), applies the usage
migrations, loads the rows by COPY (a year of traffic, evenly spread, 1,000 keys and
users, 3 models, 3 tiers), then times the report three times for the whole table and by
model, and prints the plan's partitions. Needs a few GB of disk per 10 million rows.

    python -m bench.usage_report [--rows 50000000] [--days 365] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.db import migrate_postgres
from policies.usage.schema import migrations
from policies.usage.store import PostgresUsageStore

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = (
    "id, request_id, started_at, finished_at, principal, key_id, subject, tier, model, "
    "endpoint, upstream, status, outcome, prompt_tokens, completion_tokens, cached, streamed, "
    "disconnected, latency_ms, ttft_ms, cost, attempts"
)
MODELS, TIERS = ("gemma3-270m", "gemma3-270m-q8", "gemma3-270m-embed"), ("free", "pro", "team")
CHUNK = 20_000


async def rows(count: int, days: int, end: datetime) -> AsyncIterator[bytes]:
    """CSV lines in chunks, oldest first, `count` spread evenly over `days` before `end`."""
    start = end.timestamp() - days * 86400
    step = days * 86400 / count
    for first in range(0, count, CHUNK):
        lines = []
        for n in range(first, min(first + CHUNK, count)):
            t = start + n * step
            moment = datetime.fromtimestamp(t, UTC).isoformat()
            key, model, tier = n % 1000, MODELS[n % 3], TIERS[n % 7 % 3]
            status, outcome = (429, "rejected") if n % 50 == 0 else (200, "ok")
            lines.append(
                f"r{n},q{n},{moment},{moment},key:{key},{key},user{key},{tier},{model},"
                f"chat.completions,http://10.0.0.{n % 4}:8080,{status},{outcome},"
                f"{n % 900 + 20},{n % 200},f,t,f,{n % 3000 + 50}.5,{n % 400 + 10}.5,"
                f"0.{n % 1000:04d},1\n"
            )
        yield "".join(lines).encode()


async def load(url: str, count: int, days: int, end: datetime) -> float:
    conn = await asyncpg.connect(url)
    try:
        await migrate_postgres(conn, migrations())
        # The months of the rows, made ahead as the writer would have made them.
        day = (end - timedelta(days=days)).date()
        while day <= end.date():
            await conn.execute("SELECT usage_partition($1)", day)
            day += timedelta(days=28)
        # Indexes built after the load, as a sorted build: much faster than row by row.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'usage_records'"
        )
        await conn.execute("ALTER TABLE usage_records DROP CONSTRAINT usage_records_pkey")
        for name, _ in indexes:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
        began = time.perf_counter()
        await conn.copy_to_table(
            "usage_records",
            source=rows(count, days, end),
            columns=[c.strip() for c in COLUMNS.split(",")],
            format="csv",
        )
        await conn.execute("ALTER TABLE usage_records ADD PRIMARY KEY (id, started_at)")
        for name, sql in indexes:
            if name != "usage_records_pkey":  # on every partition: not `ON ONLY` the parent
                await conn.execute(sql.replace(" ON ONLY ", " ON "))
        await conn.execute("ANALYZE usage_records")
        return time.perf_counter() - began
    finally:
        await conn.close()


async def measure(url: str, end: datetime) -> None:
    store = PostgresUsageStore(url)
    await store.connect(migrate=False)
    since = end - timedelta(hours=24)
    try:
        for by in (None, "model"):
            times = []
            for _ in range(3):
                began = time.perf_counter()
                _, total = await store.report(since, end, by)
                times.append(time.perf_counter() - began)
            print(
                f"report of the last 24 h{' by ' + by if by else ''}: {total.requests:,} rows, "
                f"median {statistics.median(times) * 1000:.0f} ms (runs: "
                + ", ".join(f"{t * 1000:.0f}" for t in times)
                + " ms)"
            )
        assert store.pool is not None
        plan = await store.pool.fetch(
            "EXPLAIN SELECT count(*) FROM usage_records WHERE started_at >= $1 AND started_at < $2",
            since,
            end,
        )
        scanned = sorted({w for (line,) in plan for w in line.split() if "usage_records_" in w})
        print("partitions the plan reads:", ", ".join(scanned))
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"bench_usage_report_{args.rows}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    end = datetime.now(UTC)
    try:
        seconds = await load(url, args.rows, args.days, end)
        size = await admin.fetchval(f"SELECT pg_size_pretty(pg_database_size('{name}'))")
        print(f"loaded {args.rows:,} rows, {args.days} days, by COPY in {seconds:.0f} s ({size})")
        await measure(url, end)
    finally:
        if not args.keep:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
