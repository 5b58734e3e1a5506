"""The read-only role of the usage dashboard, created by the docs' own SQL: it reads
`usage_records` and nothing else, and each panel's query can find its time range through
an index."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from monitoring.dashboard_kit import targets
from monitoring.grafana_sql import QueryTime, expand
from monitoring.usage_dashboard import OUTPUT
from tests.monitoring.usage_rows import FROM, INTERVAL, TO

pytestmark = pytest.mark.asyncio(loop_scope="module")
PANELS = {p["title"]: t["rawSql"] for p, t in targets(json.loads(OUTPUT.read_text()))}
INDEX_SCANS = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


async def test_the_reader_reads_usage_records(reader: asyncpg.Connection[Any]) -> None:
    assert await reader.fetchval("SELECT count(*) FROM usage_records") == 240


async def test_the_reader_cannot_write_even_outside_read_only_transactions(
    reader: asyncpg.Connection[Any],
) -> None:
    assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        await reader.execute("DELETE FROM usage_records")
    for statement in (
        "DELETE FROM usage_records",
        "UPDATE usage_records SET cost = 0",
        "INSERT INTO usage_records SELECT * FROM usage_records LIMIT 1",
        "CREATE TABLE copied AS SELECT * FROM usage_records",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await read_write(reader, statement)


async def read_write(reader: asyncpg.Connection[Any], statement: str) -> None:
    """`statement` in a transaction that lifts the read-only default, as anyone may: the
    grants are what keep the role out."""
    async with reader.transaction():
        await reader.execute("SET LOCAL transaction_read_only = off")
        await reader.execute(statement)


async def test_the_reader_cannot_read_the_api_keys(reader: asyncpg.Connection[Any]) -> None:
    for table in ("api_keys", "schema_migrations"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.fetch(f"SELECT * FROM {table}")


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in nodes(child))]


async def plan_of(reader: asyncpg.Connection[Any], sql: str) -> list[dict[str, Any]]:
    """The plan's nodes with sequential scans made a last resort: what an index can do."""
    async with reader.transaction():
        await reader.execute("SET LOCAL enable_seqscan = off")
        text = await reader.fetchval(f"EXPLAIN (FORMAT JSON) {sql}")
    return nodes(json.loads(text)[0]["Plan"])


@pytest.mark.parametrize("title", list(PANELS))
async def test_panel_reads_its_time_range_through_an_index(
    reader: asyncpg.Connection[Any], title: str
) -> None:
    found = await plan_of(reader, expand(PANELS[title], QueryTime(FROM, TO, INTERVAL)))
    assert not [n for n in found if n["Node Type"] == "Seq Scan"]
    scans = [n for n in found if n["Node Type"] in INDEX_SCANS]
    assert scans
    for scan in scans:
        assert "started_at >=" in scan["Index Cond"], scan


# An index of a partitioned table and those of its partitions (migration 008).
INDEX_AND_PARTS = """
SELECT $1::text UNION
SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
"""


async def test_the_variants_panel_reads_the_partial_index(reader: asyncpg.Connection[Any]) -> None:
    sql = expand(PANELS["Variants side by side"], QueryTime(FROM, TO, INTERVAL))
    variant_indexes = {r[0] for r in await reader.fetch(INDEX_AND_PARTS, "usage_records_variant")}
    used = {n.get("Index Name") for n in await plan_of(reader, sql)}
    assert used & variant_indexes, used
    assert {n["Relation Name"] for n in await plan_of(reader, sql) if "Relation Name" in n} == {
        "usage_records_2026_03"
    }, "the rows' month alone"
