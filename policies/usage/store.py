"""Where usage rows end up: PostgreSQL (shared by replicas) or the embedded SQLite file.

Inserts are idempotent on the record id (`ON CONFLICT (id) DO NOTHING`), so a batch
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

import aiosqlite
import asyncpg

from gateway.db import (
    Migration,
    load_migrations,
    open_postgres_pool,
    open_sqlite,
)
from policies.usage.pg_insert import NoTemporaryTables, array_batch, copy_batch
from policies.usage.record import COLUMNS, UsageRow, utc
from policies.usage.report import (
    ERROR_CONDITION,
    PERCENTILES,
    ReportRow,
    group_column,
    interpolate,
)

log = logging.getLogger("policies.usage.store")


class StoreUnavailable(RuntimeError):
    """The store cannot answer (not migrated, or not connected)."""


# What a failing database looks like; anything else is a bug, logged as such.
PG_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    StoreUnavailable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
_TIMES = (COLUMNS.index("started_at"), COLUMNS.index("finished_at"))
assert _TIMES == (2, 3), "SqliteUsageStore.insert converts columns 2 and 3"
# Reports may scan millions of rows: longer than the writer's statements may take.
REPORT_TIMEOUT = 120.0
_COLUMN_LIST = ", ".join(COLUMNS)
_SQLITE_INSERT = (
    f"INSERT INTO usage_records ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (id) DO NOTHING"
)
_SUMS = (
    f"count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),"
    f" coalesce(sum(CASE WHEN {ERROR_CONDITION} THEN 1 ELSE 0 END), 0), coalesce(sum(cost), 0)"
)


def migrations() -> list[Migration]:
    """The usage schema; `llama-gateway db migrate` applies it, and so does the writer."""
    return load_migrations("policies.usage")


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


def _sort(rows: list[ReportRow]) -> list[ReportRow]:
    return sorted(rows, key=lambda r: (-r.requests, r.group is None, r.group or ""))


class PostgresUsageStore:
    dependency = "postgres"
    errors = PG_ERRORS

    def __init__(
        self, dsn: str, *, wait_seconds: float = 5.0, report_timeout: float = REPORT_TIMEOUT
    ) -> None:
        self.dsn = dsn
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
        quantiles = ", ".join(
            f"percentile_cont({q}) WITHIN GROUP (ORDER BY latency_ms)" for q in PERCENTILES
        )
        where = "FROM usage_records WHERE started_at >= $1 AND started_at < $2"
        # One scan for the groups and the total line (the empty grouping set).
        sql = (
            f"SELECT grouping({column}) = 1, {column}, {_SUMS}, {quantiles} {where}"
            f" GROUP BY GROUPING SETS (({column}), ())"
            if column
            else f"SELECT true, 'all', {_SUMS}, {quantiles} {where}"
        )
        try:
            records = await self._db().fetch(sql, since, until, timeout=self.report_timeout)
        except asyncpg.UndefinedTableError as exc:
            raise StoreUnavailable(
                "the usage table does not exist: run `llama-gateway db migrate`"
            ) from exc
        groups = [_pg_row(r[1:]) for r in records if not r[0]]
        total = next(_pg_row(r[1:]) for r in records if r[0])
        return _sort(groups), ReportRow("all", *dataclasses.astuple(total)[1:])


def _pg_row(record: Any) -> ReportRow:
    group, requests, prompt, completion, errors, cost, p50, p95 = tuple(record)
    return ReportRow(group, requests, prompt, completion, errors, float(cost), p50, p95)


def _iso(epoch: float) -> str:
    return utc(epoch).isoformat(timespec="microseconds")


def _sqlite_time(moment: datetime) -> str:
    return _iso(moment.timestamp())


class SqliteUsageStore:
    dependency = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, StoreUnavailable)

    def __init__(self, path: Path, *, wait_seconds: float = 5.0) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self.conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # the one connection: one user at a time

    async def connect(self, *, migrate: bool = True) -> None:
        async with self._lock:
            if self.conn is not None:
                return
            self.conn = await open_sqlite(
                self.path,
                wait_seconds=self.wait_seconds,
                migrations=migrations() if migrate else (),
            )

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()

    def _db(self) -> aiosqlite.Connection:
        if self.conn is None:
            raise StoreUnavailable("the usage database is not open")
        return self.conn

    async def insert(self, rows: Sequence[UsageRow]) -> int:
        if not rows:
            return 0
        values = [(*row[:2], _iso(row[2]), _iso(row[3]), *row[4:]) for row in rows]
        db = self._db()
        async with self._lock:  # one transaction at a time on the one connection
            before = db.total_changes
            try:
                # BEGIN inside the try: aiosqlite runs a statement whose caller was
                # cancelled, so a cancelled BEGIN still opens a transaction to roll back.
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(_SQLITE_INSERT, values)
                await db.commit()
            except BaseException:
                await asyncio.shield(db.rollback())
                raise
            return db.total_changes - before

    async def report(
        self, since: datetime, until: datetime, by: str | None
    ) -> tuple[list[ReportRow], ReportRow]:
        column = group_column(by)
        bounds = (_sqlite_time(since), _sqlite_time(until))
        try:
            total = await self._query("'all'", bounds)
            grouped = await self._query(column, bounds) if column else []
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            raise StoreUnavailable(
                "the usage table does not exist: run `llama-gateway db migrate`"
            ) from exc
        empty = ReportRow("all", 0, 0, 0, 0, 0.0, None, None)
        return _sort(grouped), total[0] if total else empty

    async def _query(self, group: str, bounds: tuple[str, str]) -> list[ReportRow]:
        """percentile_cont as PostgreSQL computes it: the two ranked neighbours of
        position q * (n - 1), interpolated in Python."""
        picks = ", ".join(
            f"max(CASE WHEN i = CAST((n - 1) * {q} AS INTEGER) THEN latency_ms END),"
            f" max(CASE WHEN i = CAST((n - 1) * {q} AS INTEGER) + 1 THEN latency_ms END)"
            for q in PERCENTILES
        )
        sql = f"""WITH ranked AS (
            SELECT {group} AS grp, prompt_tokens, completion_tokens, status, outcome, cost,
                latency_ms,
                row_number() OVER (PARTITION BY {group} ORDER BY latency_ms) - 1 AS i,
                count(*) OVER (PARTITION BY {group}) AS n
            FROM usage_records WHERE started_at >= ? AND started_at < ?)
            SELECT grp, {_SUMS}, max(n), {picks} FROM ranked GROUP BY grp"""
        db = self._db()
        async with self._lock:
            rows = await db.execute_fetchall(sql, bounds)
        return [_sqlite_row(tuple(row)) for row in rows]


def _sqlite_row(row: tuple[Any, ...]) -> ReportRow:
    group, requests, prompt, completion, errors, cost, n, p50a, p50b, p95a, p95b = row
    return ReportRow(
        group,
        requests,
        prompt,
        completion,
        errors,
        float(cost),
        interpolate(p50a, p50b, n, PERCENTILES[0]),
        interpolate(p95a, p95b, n, PERCENTILES[1]),
    )


def open_usage_store(database_url: str | None, sqlite_path: Path) -> UsageStore:
    """PostgreSQL when a database URL is configured, else the embedded SQLite file."""
    if database_url:
        return PostgresUsageStore(database_url)
    return SqliteUsageStore(sqlite_path)
