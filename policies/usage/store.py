"""Where usage rows end up: PostgreSQL (shared by replicas) or the embedded SQLite file.

Inserts are idempotent on the record id (`ON CONFLICT ... DO NOTHING`), so a batch
written twice (a replay after an ambiguous failure) leaves one row per request, and
transactional, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from gateway.db import open_postgres_pool
from policies.usage.pg_insert import NoTemporaryTables, array_batch, copy_batch
from policies.usage.record import UsageRow
from policies.usage.report import (
    PERCENTILES,
    SUMS,
    TIMINGS,
    ReportRow,
    group_column,
    sort_groups,
)
from policies.usage.schema import StoreUnavailable, migrations
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.upkeep import Upkeep, upkeep_postgres

log = logging.getLogger("policies.usage.store")


# What a failing database looks like; anything else is a bug, logged as such.
PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    StoreUnavailable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# Reports may scan millions of rows: longer than the writer's statements may take.
REPORT_TIMEOUT = 120.0


# Errors that retrying the same rows cannot cure.
_BAD_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
)


def is_permanent(exc: BaseException, store: UsageStore) -> bool:
    """True for rows the database will never take (bad data, a bug); False for a database
    that is down or slow, which a later retry may find back."""
    return isinstance(exc, _BAD_DATA) or not isinstance(exc, store.errors)


class UsageStore(Protocol):
    dependency: str  # the `dependency` label of the error metric: "postgres" or "sqlite"
    errors: tuple[type[BaseException], ...]  # what a failing database raises

    async def connect(self, *, migrate: bool = True) -> None: ...
    async def close(self) -> None: ...
    async def insert(self, rows: Sequence[UsageRow]) -> int: ...
    async def report(
        self, since: datetime, until: datetime, by: str | None
    ) -> tuple[list[ReportRow], ReportRow]: ...


class PostgresUsageStore:
    dependency = "postgres"
    errors = PG_ERRORS

    def __init__(
        self,
        dsn: str,
        *,
        wait_seconds: float = 5.0,
        report_timeout: float = REPORT_TIMEOUT,
        retention_days: int | None = None,
    ) -> None:
        self.dsn = dsn
        # Partitions ahead, and retention (`policies.usage.upkeep`), from the writer's batches.
        self.upkeep = Upkeep(retention_days)
        self.wait_seconds = wait_seconds
        self.report_timeout = report_timeout
        self.pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._connecting = asyncio.Lock()
        # Batches go by COPY through a temporary table, unless the role may not create one.
        self.staging = True

    async def connect(self, *, migrate: bool = True) -> None:
        async with self._connecting:
            if self.pool is not None:
                return
            self.pool = await open_postgres_pool(
                self.dsn, wait_seconds=self.wait_seconds, migrations=migrations() if migrate else ()
            )

    async def ping(self) -> bool:
        """Whether the database answers a trivial query now (for readiness probes)."""
        try:
            await self._db().fetchval("SELECT 1", timeout=self.wait_seconds)
        except self.errors:
            return False
        return True

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.wait_seconds):
                await pool.close()  # waits for connections in use to come back
        except TimeoutError:
            pool.terminate()

    def _db(self) -> asyncpg.Pool[asyncpg.Record]:
        if self.pool is None:
            raise StoreUnavailable("the usage database is not connected")
        return self.pool

    async def insert(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        if self.upkeep.due():
            await upkeep_postgres(self._db(), self.upkeep)
        if self.staging:
            try:
                return await copy_batch(self._db(), rows)
            except NoTemporaryTables as exc:
                log.warning("usage: no temporary staging table (%s); inserting with arrays", exc)
                self.staging = False
        return await array_batch(self._db(), rows)

    async def report(
        self, since: datetime, until: datetime, by: str | None
    ) -> tuple[list[ReportRow], ReportRow]:
        column = group_column(by)
        # percentile_cont leaves out NULLs: the time to first byte of the rows that have one.
        quantiles = ", ".join(
            f"percentile_cont({q}) WITHIN GROUP (ORDER BY {timing})"
            for timing in TIMINGS
            for q in PERCENTILES
        )
        where = "FROM usage_records WHERE started_at >= $1 AND started_at < $2"
        # One scan for the groups and the total line (the empty grouping set).
        sql = (
            f"SELECT grouping({column}) = 1, {column}, {SUMS}, {quantiles} {where}"
            f" GROUP BY GROUPING SETS (({column}), ())"
            if column
            else f"SELECT true, 'all', {SUMS}, {quantiles} {where}"
        )
        try:
            records = await self._db().fetch(sql, since, until, timeout=self.report_timeout)
        except asyncpg.UndefinedTableError as exc:
            raise StoreUnavailable(
                "the usage table does not exist: run `llama-gateway db migrate`"
            ) from exc
        groups = [_pg_row(r[1:]) for r in records if not r[0]]
        total = next(_pg_row(r[1:]) for r in records if r[0])
        return sort_groups(groups), ReportRow("all", *dataclasses.astuple(total)[1:])


def _pg_row(record: Any) -> ReportRow:
    group, requests, prompt, completion, cached, errors, cost, *percentiles = tuple(record)
    return ReportRow(group, requests, prompt, completion, cached, errors, float(cost), *percentiles)


def open_usage_store(
    database_url: str | None, sqlite_path: Path, retention_days: int | None = None
) -> UsageStore:
    """PostgreSQL when a database URL is configured, else the embedded SQLite file."""
    if database_url:
        return PostgresUsageStore(database_url, retention_days=retention_days)
    return SqliteUsageStore(sqlite_path, retention_days=retention_days)
