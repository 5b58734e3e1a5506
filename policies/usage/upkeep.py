"""Keeping the usage table in hand as it grows for years: partitions made ahead of the rows
(PostgreSQL), and rows past the retention dropped.

On PostgreSQL `usage_records` is partitioned by month (migration 008): the writer makes
this month's partition and the next AHEAD_MONTHS' before rows need them, and with
`retention_days` drops the partitions that ended before the cutoff, whole (DROP TABLE:
no row-by-row delete, nothing left to vacuum). On SQLite the rows before the cutoff are
deleted. Both run with the writer's first batch and every UPKEEP_SECONDS after; a failure
is logged and tried again then, never in the way of the rows: a row whose month has no
partition yet goes to the default partition, and is counted and reported all the same.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiosqlite
import asyncpg

log = logging.getLogger("policies.usage.store")

AHEAD_MONTHS = 2
UPKEEP_SECONDS = 3600.0


@dataclass(slots=True)
class Upkeep:
    retention_days: int | None = None
    due_at: float = 0.0  # time.monotonic() of the next run

    def due(self) -> bool:
        """Whether a run is due now; if so, the next one is set UPKEEP_SECONDS from now."""
        now = time.monotonic()
        if now < self.due_at:
            return False
        self.due_at = now + UPKEEP_SECONDS
        return True

    def cutoff(self) -> datetime | None:
        """Rows that started before this are past the retention."""
        if self.retention_days is None:
            return None
        return datetime.now(UTC) - timedelta(days=self.retention_days)


def months_ahead(today: date) -> list[date]:
    """The first day of this month and of the AHEAD_MONTHS after it."""
    first = today.replace(day=1)
    months = [first]
    for _ in range(AHEAD_MONTHS):
        first = (first + timedelta(days=32)).replace(day=1)
        months.append(first)
    return months


async def upkeep_postgres(pool: asyncpg.Pool[asyncpg.Record], upkeep: Upkeep) -> None:
    cutoff = upkeep.cutoff()
    try:
        async with pool.acquire() as conn, conn.transaction():
            for month in months_ahead(datetime.now(UTC).date()):
                await conn.execute("SELECT usage_partition($1)", month)
            dropped: list[Any] = []
            if cutoff is not None:
                dropped = await conn.fetch("SELECT usage_drop_partitions($1)", cutoff)
    except asyncpg.UndefinedFunctionError:
        return  # a table from before migration 008 that this process did not migrate
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("usage: partition upkeep failed (%s); tried again within the hour", exc)
        return
    for (name,) in dropped:
        log.info("usage: dropped partition %s (past the retention)", name)


async def upkeep_sqlite(db: aiosqlite.Connection, cutoff_text: str) -> int:
    """Delete the rows that started before `cutoff_text` (the store's time format)."""
    try:
        cursor = await db.execute("DELETE FROM usage_records WHERE started_at < ?", (cutoff_text,))
        await db.commit()
    except sqlite3.Error as exc:
        await db.rollback()
        log.warning("usage: retention upkeep failed (%s); tried again within the hour", exc)
        return 0
    if cursor.rowcount:
        log.info("usage: deleted %d rows past the retention", cursor.rowcount)
    return cursor.rowcount
