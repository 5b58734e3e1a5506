"""The usage dashboard's queries on a table of a few million rows: their plans and times.

Fills `usage_records` in a fresh schema with generated rows (INSERT ... SELECT over
generate_series, in time order as the writer appends them, then VACUUM ANALYZE as
autovacuum would), then for every panel of monitoring/grafana/dashboards/
llama-gateway-usage.json and a few dashboard time ranges runs EXPLAIN (ANALYZE, BUFFERS)
on the statement Grafana would send (macros expanded by monitoring/grafana_sql.py) and
prints each plan's scans, its time and the buffers it touched; the plans that use an
index of migration 007 again without it. Then what that index costs inserts: the writer's
COPY batches and batches of rows that name a variant, in rounds with the index dropped and
built again (bench/usage_data.py). The schema is dropped at the end:

    python bench/usage_queries.py                     # 3,000,000 rows over 30 days
    python bench/usage_queries.py --rows 300000 --plans   # the plans in full

Prints numbers only; run it on an idle machine for figures worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.usage_data import insert_cost, load
from bench.usage_writer import postgres
from gateway.db import Migration, migrate_postgres
from monitoring.dashboard_kit import targets
from monitoring.grafana_sql import QueryTime, expand
from monitoring.usage_dashboard import OUTPUT
from policies.usage.schema import migrations
from policies.usage.store import PostgresUsageStore

if TYPE_CHECKING:
    from bench.usage_data import Conn

# Dashboard ranges, each with about the interval Grafana picks for a half-width panel
# (the range over its width in pixels, rounded, at least the data source's 1m).
RANGES = (
    ("1h", timedelta(hours=1), timedelta(minutes=1)),
    ("24h", timedelta(days=1), timedelta(minutes=2)),
    ("7d", timedelta(days=7), timedelta(minutes=10)),
    ("30d", timedelta(days=30), timedelta(hours=1)),
)
# The migration whose indexes the dashboard's plans are compared without.
INDEXES = "variant_index"
CREATED = re.compile(r"CREATE INDEX (\w+)")


# A partition's table or index -> the partitioned one it belongs to (migration 008).
PARENTS = """
SELECT c.relname AS child, p.relname AS parent FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
"""


def scans(node: dict[str, Any], parents: dict[str, str]) -> list[str]:
    """The plan's scan nodes, each with the index or table it reads (a partition's by the
    partitioned one's name)."""
    found = []
    if node["Node Type"].endswith("Scan") and "Subquery" not in node["Node Type"]:
        read = node.get("Index Name") or node.get("Relation Name") or node.get("CTE Name")
        found.append(f"{node['Node Type']} {parents.get(read, read)}")
    for child in node.get("Plans", []):
        found.extend(scans(child, parents))
    return found


def partitions(node: dict[str, Any]) -> set[str]:
    """The tables the plan reads rows from."""
    here = {node["Relation Name"]} if "Relation Name" in node else set()
    return here.union(*(partitions(child) for child in node.get("Plans", [])))


async def explain(conn: Conn, sql: str, repeat: int) -> dict[str, Any]:
    """The fastest of `repeat` runs of EXPLAIN (ANALYZE, BUFFERS)."""
    plans = []
    for _ in range(repeat):
        text = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
        plans.append(json.loads(text)[0])
    best: dict[str, Any] = min(plans, key=lambda plan: plan["Execution Time"])
    return best


def line(title: str, label: str, plan: dict[str, Any], parents: dict[str, str]) -> str:
    top = plan["Plan"]
    buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    kinds = "; ".join(sorted(set(scans(top, parents))))
    return (
        f"  {title:<34} {label:>4} {plan['Execution Time']:9,.1f} ms {buffers:>8,} buffers"
        f"  {top['Actual Rows']:>6,} rows  {len(partitions(top))} tables  {kinds}"
    )


async def plans(conn: Conn, end: datetime, args: argparse.Namespace) -> None:
    dashboard = json.loads(OUTPUT.read_text())
    parents = dict(list(row) for row in await conn.fetch(PARENTS))
    print("panel                                range      time   buffers    rows  tables  scans")
    for panel, target in targets(dashboard):
        for label, span, interval in RANGES:
            sql = expand(target["rawSql"], QueryTime(end - span, end, interval))
            plan = await explain(conn, sql, args.repeat)
            print(line(panel["title"], label, plan, parents), flush=True)
            if args.plans:
                text = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
                print("\n".join(f"      {row[0]}" for row in text))


def index_migration() -> Migration:
    return next(m for m in migrations() if m.name == INDEXES)


async def without_index_migration(conn: Conn, end: datetime, args: argparse.Namespace) -> None:
    """The plans that use an index of migration `INDEXES`, again without its indexes (dropped
    in a transaction that is rolled back)."""
    migration = index_migration()
    names = CREATED.findall(migration.sql)
    print(f"without migration {migration.version:03d} ({', '.join(names)}):")
    parents = dict(list(row) for row in await conn.fetch(PARENTS))
    for panel, target in targets(json.loads(OUTPUT.read_text())):
        for label, span, interval in RANGES:
            sql = expand(target["rawSql"], QueryTime(end - span, end, interval))
            used = " ".join(scans((await explain(conn, sql, 1))["Plan"], parents))
            if not any(name in used for name in names):
                continue
            transaction = conn.transaction()
            await transaction.start()
            try:
                for name in names:
                    await conn.execute(f"DROP INDEX {name}")
                plan = await explain(conn, sql, args.repeat)
                print(line(panel["title"], label, plan, parents))
            finally:
                await transaction.rollback()


async def main(args: argparse.Namespace) -> None:
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    async with postgres(args.database_url) as store:
        assert isinstance(store, PostgresUsageStore)  # with its URL to the fresh schema
        conn = await asyncpg.connect(store.dsn)
        try:
            await migrate_postgres(conn, migrations())
            await load(conn, args.rows, args.days, end)
            await plans(conn, end, args)
            await without_index_migration(conn, end, args)
            print(f"load avg {os.getloadavg()[0]:.2f}", flush=True)
            await insert_cost(conn, store.dsn, CREATED.findall(index_migration().sql), args)
        finally:
            await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each plan (the fastest)")
    parser.add_argument("--plans", action="store_true", help="print each plan in full")
    parser.add_argument("--rounds", type=int, default=3, help="insert rounds with and without")
    parser.add_argument("--batches", type=int, default=40, help="batches of 500 rows per round")
    print(f"load avg {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    asyncio.run(main(parser.parse_args()))
