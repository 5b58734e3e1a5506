"""The usage dashboard's tests: a schema holding generated usage rows, read through the
read-only role that docs/operations.md tells operators to create."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio

from gateway.db import migrate_postgres
from policies.auth.keys import migrations as key_migrations
from policies.usage.schema import migrations
from tests.monitoring.usage_rows import COLUMNS, START, records
from tests.support.gateways import PG_URL

ROOT = Path(__file__).resolve().parents[2]


def reader_sql(role: str, schema: str) -> str:
    """The docs' block that creates the read-only role, for this role, schema and database."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = next(b for b in re.findall(r"```sql\n(.*?)```", text, re.S) if "CREATE ROLE" in b)
    for old, new in (("DATABASE gateway", "DATABASE test"), ("SCHEMA public", f"SCHEMA {schema}")):
        assert block.count(old) == 1, f"the docs' role SQL no longer says {old!r}"
        block = block.replace(old, new)
    return re.sub(r"\bgrafana_reader\b", role, block)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader() -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection as the read-only role to a schema holding the generated rows (and the
    API keys' table, which the role must not read)."""
    schema, role = f"test_{uuid.uuid4().hex[:12]}", f"reader_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
    try:
        await migrate_postgres(admin, [*migrations(), *key_migrations()])
        # The rows' month, made ahead as the writer makes it (migration 008's partitions).
        await admin.execute("SELECT usage_partition($1)", START.date())
        await admin.copy_records_to_table(
            "usage_records", records=records(), columns=COLUMNS, schema_name=schema
        )
        await admin.execute("ANALYZE usage_records")
        await admin.execute(reader_sql(role, schema))
        conn = await asyncpg.connect(PG_URL, user=role, server_settings={"search_path": schema})
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()
