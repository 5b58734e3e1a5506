"""How many usage rows per second the background writer sustains, and how long reports take.

Feeds the real `UsageWriter` synthetic rows as fast as it takes them (keeping its queue
below the spill threshold, so every row goes straight to the database), then times the
report queries over everything written. The writer's CPU per row is this process's CPU
time while feeding, less what making the synthetic rows costs. PostgreSQL gets a fresh
schema, dropped at the end:

    python bench/usage_writer.py --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/usage_writer.py --sqlite            # the embedded store, in a temp dir

Prints numbers only; run it on an idle machine for figures worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.metrics import Metrics
from policies.usage.journal import Journal
from policies.usage.metrics import UsageMetrics
from policies.usage.record import UsageRow
from policies.usage.report import GROUPS
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore, UsageStore
from policies.usage.writer import UsageWriter, WriterOptions

MODELS = ["gemma3-270m", "gemma3-270m-embed", "llama-8b", "qwen-7b"]
TIERS = ["free", "premium", "enterprise"]


def synthetic(n: int, now: float, span: float) -> UsageRow:
    started = now - span * ((n * 0.6180339887) % 1)  # spread over the span
    return UsageRow(
        id=f"bench{n:012x}",
        request_id=f"req{n:012x}",
        started_at=started,
        finished_at=started + 0.2,
        principal=f"key:{n % 500:012x}",
        key_id=f"{n % 500:012x}",
        subject=f"user-{n % 200}",
        tier=TIERS[n % 3],
        model=MODELS[n % 4],
        endpoint="chat.completions",
        upstream="http://127.0.0.1:8081",
        status=429 if n % 50 == 0 else 200,
        outcome="rejected" if n % 50 == 0 else "ok",
        prompt_tokens=20 + n % 100,
        completion_tokens=n % 300,
        cached=n % 10 == 0,
        streamed=n % 2 == 0,
        disconnected=False,
        latency_ms=5.0 + (n * 7919) % 2000,
        ttft_ms=2.0,
        cost=0.0001,
        attempts=1,
        queued_ms=None,
        cached_tokens=n % 20,
        variant=None,
    )


async def wait_until(condition: Callable[[], bool], step: float) -> None:
    """Poll: the writer offers nothing to wait on from outside."""
    while True:
        if condition():
            return
        await asyncio.sleep(step)


@asynccontextmanager
async def postgres(url: str) -> AsyncIterator[UsageStore]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in url else "?"
        yield PostgresUsageStore(f"{url}{separator}search_path={schema}")
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def making_cost(rows: int) -> float:
    """CPU seconds this script spends making `rows` synthetic rows (not the writer's work)."""
    now, began = time.time(), time.process_time()
    for n in range(rows):
        synthetic(n, now, 7 * 86400)
    return time.process_time() - began


async def feed(writer: UsageWriter, rows: int, queue_size: int) -> float:
    """Submit `rows` rows, never letting the queue spill; seconds until all are stored."""
    metrics = writer.metrics.registry
    now = time.time()
    began = time.perf_counter()
    for n in range(rows):
        if writer.queued() >= queue_size // 2:
            await wait_until(lambda: writer.queued() < queue_size // 2, 0.001)
        writer.submit(synthetic(n, now, 7 * 86400))
    stored = {"destination": "database"}
    await wait_until(
        lambda: (
            (metrics.get_sample_value("llama_gateway_usage_records_total", stored) or 0) >= rows
        ),
        0.005,
    )
    return time.perf_counter() - began


async def run(store: UsageStore, args: argparse.Namespace, data_dir: Path) -> None:
    options = WriterOptions(batch_size=args.batch_size, queue_size=args.queue_size)
    writer = UsageWriter(store, Journal(data_dir), UsageMetrics(Metrics()), options)
    await writer.start()
    try:
        await wait_until(lambda: writer.healthy, 0.01)  # connected and migrated
        cpu = time.process_time()
        seconds = await feed(writer, args.rows, args.queue_size)
        cpu = time.process_time() - cpu - making_cost(args.rows)
        print(
            f"{store.dependency}: {args.rows:,} rows in {seconds:.2f} s = "
            f"{args.rows / seconds:,.0f} rows/s (batches of {args.batch_size}); "
            f"writer CPU {cpu / args.rows * 1e6:.1f} µs per row"
        )
        until = datetime.now(UTC)
        for since, label in ((timedelta(days=8), "all 7 days"), (timedelta(days=1), "last 24h")):
            for by in [None, *GROUPS]:
                began = time.perf_counter()
                rows, total = await store.report(until - since, until, by)
                took = (time.perf_counter() - began) * 1000
                print(
                    f"  report {label:<10} --by {by or '(none)':<10} {len(rows):>4} groups, "
                    f"{total.requests:>9,} rows: {took:7,.0f} ms"
                )
    finally:
        await writer.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        if args.sqlite:
            await run(SqliteUsageStore(Path(tmp) / "gateway.db"), args, Path(tmp))
        else:
            async with postgres(args.database_url) as store:
                await run(store, args, Path(tmp))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--sqlite", action="store_true", help="the embedded store instead")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--queue-size", type=int, default=20_000)
    print(f"load avg {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    asyncio.run(main(parser.parse_args()))
