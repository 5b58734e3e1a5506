"""The embedded usage store: a SQLite file in the data directory, for a gateway without
PostgreSQL.

Inserts are idempotent and transactional as in PostgreSQL; reports compute the same
percentiles (PostgreSQL's `percentile_cont`) with window functions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.db import open_sqlite
from policies.usage.record import COLUMNS, UsageRow, utc
from policies.usage.report import (
    PERCENTILES,
    SUMS,
    ReportRow,
    group_column,
    interpolate,
    sort_groups,
)
from policies.usage.schema import StoreUnavailable, migrations
from policies.usage.upkeep import Upkeep, upkeep_sqlite

_TIMES = (COLUMNS.index("started_at"), COLUMNS.index("finished_at"))
assert _TIMES == (2, 3), "SqliteUsageStore.insert converts columns 2 and 3"
_COLUMN_LIST = ", ".join(COLUMNS)
_SQLITE_INSERT = (
    f"INSERT INTO usage_records ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (id) DO NOTHING"
)


def _iso(epoch: float) -> str:
    return utc(epoch).isoformat(timespec="microseconds")


def _sqlite_time(moment: datetime) -> str:
    return _iso(moment.timestamp())


class SqliteUsageStore:
    dependency = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, StoreUnavailable)

    def __init__(
        self, path: Path, *, wait_seconds: float = 5.0, retention_days: int | None = None
    ) -> None:
        self.path = path
        self.upkeep = Upkeep(retention_days)  # retention (`policies.usage.upkeep`)
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
            if self.upkeep.due() and (cutoff := self.upkeep.cutoff()) is not None:
                await upkeep_sqlite(db, _sqlite_time(cutoff))
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
        empty = ReportRow("all", 0, 0, 0, 0, 0, 0.0, None, None)
        return sort_groups(grouped), total[0] if total else empty

    async def _query(self, group: str, bounds: tuple[str, str]) -> list[ReportRow]:
        """percentile_cont as PostgreSQL computes it: the two ranked neighbours of
        position q * (n - 1), interpolated in Python; the time to first byte ranked among
        the rows that have one (m counts those), as percentile_cont leaves NULLs out."""
        picks = f"{_picks('latency_ms', 'i', 'n')}, {_picks('ttft_ms', 'j', 'm')}"
        sql = f"""WITH ranked AS (
            SELECT {group} AS grp, prompt_tokens, completion_tokens, cached_tokens, status,
                outcome, cost, latency_ms, ttft_ms,
                row_number() OVER (PARTITION BY {group} ORDER BY latency_ms) - 1 AS i,
                count(*) OVER (PARTITION BY {group}) AS n,
                row_number() OVER (PARTITION BY {group}, ttft_ms IS NULL ORDER BY ttft_ms) - 1
                    AS j,
                count(ttft_ms) OVER (PARTITION BY {group}) AS m
            FROM usage_records WHERE started_at >= ? AND started_at < ?)
            SELECT grp, {SUMS}, max(n), max(m), {picks} FROM ranked GROUP BY grp"""
        db = self._db()
        async with self._lock:
            rows = await db.execute_fetchall(sql, bounds)
        return [_sqlite_row(tuple(row)) for row in rows]


def _picks(value: str, rank: str, count: str) -> str:
    """The two neighbours of each percentile's position among the ranked `value`s."""
    return ", ".join(
        f"max(CASE WHEN {value} IS NOT NULL AND {rank} = CAST(({count} - 1) * {q} AS INTEGER)"
        f" THEN {value} END), max(CASE WHEN {value} IS NOT NULL AND"
        f" {rank} = CAST(({count} - 1) * {q} AS INTEGER) + 1 THEN {value} END)"
        for q in PERCENTILES
    )


def _sqlite_row(row: tuple[Any, ...]) -> ReportRow:
    group, requests, prompt, completion, cached, errors, cost, n, m, *neighbours = row
    counts = [n] * len(PERCENTILES) + [m] * len(PERCENTILES)
    percentiles = [
        interpolate(
            neighbours[2 * k], neighbours[2 * k + 1], count, PERCENTILES[k % len(PERCENTILES)]
        )
        for k, count in enumerate(counts)
    ]
    return ReportRow(group, requests, prompt, completion, cached, errors, float(cost), *percentiles)
