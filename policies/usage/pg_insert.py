"""Batch inserts into PostgreSQL that cost the gateway little CPU per row.

A batch goes by binary COPY into a temporary staging table (one per connection, emptied
at every commit), then `INSERT ... SELECT ... ON CONFLICT (id, started_at) DO NOTHING`
moves it into `usage_records` (partitioned by month: migration 008), both in one
transaction: a batch is stored whole or not at all, and a replay never duplicates a row.
COPY encodes the row tuples as they come, with no per-column lists and none of the
per-element type checks that array parameters cost; times travel as epoch seconds
(float8) and become timestamptz in the database, so no datetime object is built per row.

A role without the TEMPORARY privilege (PUBLIC has it unless revoked) cannot create the
staging table: its batches go as array parameters (`unnest`), same guarantees, more CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from policies.usage.record import COLUMNS, UsageRow

log = logging.getLogger("policies.usage.store")

PG_TYPES = {
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "status": "integer",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "cached": "boolean",
    "streamed": "boolean",
    "disconnected": "boolean",
    "latency_ms": "float8",
    "ttft_ms": "float8",
    "cost": "float8",
    "attempts": "integer",
    "queued_ms": "float8",
    "cached_tokens": "integer",
}
_TIMES = ("started_at", "finished_at")
# How the rows travel: like the table, but with the times as epoch seconds.
_WIRE_TYPES = {c: "float8" if c in _TIMES else PG_TYPES.get(c, "text") for c in COLUMNS}
_COLUMN_LIST = ", ".join(COLUMNS)
_SELECT = ", ".join(f"to_timestamp({c})" if c in _TIMES else c for c in COLUMNS)

STAGING = "usage_staging"
CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ("
    + ", ".join(f"{c} {t}" for c, t in _WIRE_TYPES.items())
    + ") ON COMMIT DELETE ROWS"
)
FROM_STAGING = (
    f"INSERT INTO usage_records ({_COLUMN_LIST}) SELECT {_SELECT} FROM pg_temp.{STAGING}"
    " ON CONFLICT (id, started_at) DO NOTHING"
)
FROM_ARRAYS = (
    f"INSERT INTO usage_records ({_COLUMN_LIST}) SELECT {_SELECT} FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_WIRE_TYPES.values()))
    + f") AS r({_COLUMN_LIST}) ON CONFLICT (id, started_at) DO NOTHING"
)


class NoTemporaryTables(Exception):
    """The role may not create temporary tables."""


def inserted(status: str) -> int:
    """The row count of an `INSERT 0 n` command status."""
    return int(status.rsplit(" ", 1)[-1])


async def copy_batch(pool: asyncpg.Pool[asyncpg.Record], rows: Sequence[UsageRow]) -> int:
    """COPY into the staging table, then move the new rows: one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            # One cheap round trip: the table outlives the batch, but not a new connection.
            await conn.execute(CREATE_STAGING)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise NoTemporaryTables(str(exc)) from exc
        try:
            await conn.copy_records_to_table(STAGING, records=rows, schema_name="pg_temp")
        except (TypeError, ValueError, OverflowError) as exc:
            # A value its column cannot take: bad data, as asyncpg reports it for parameters.
            raise asyncpg.DataError(f"invalid input for COPY to {STAGING}: {exc}") from exc
        return inserted(await conn.execute(FROM_STAGING))


async def array_batch(pool: asyncpg.Pool[asyncpg.Record], rows: Sequence[UsageRow]) -> int:
    """One statement with a parameter per column: an array of all the rows' values."""
    columns: list[list[Any]] = [list(column) for column in zip(*rows, strict=True)]
    return inserted(await pool.execute(FROM_ARRAYS, *columns))
