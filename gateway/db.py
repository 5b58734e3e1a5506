"""Database plumbing shared by policies: connections and versioned SQL migrations.

A migration is a package-data file `NNN_name.sql` (`NNN_name.postgres.sql` for PostgreSQL
alone: SQLite never sees it); applied versions are recorded in `schema_migrations`. Each
pending migration runs in its own transaction together with its record, so a failed one
leaves nothing behind. Versions share one namespace per database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiosqlite
import asyncpg

from gateway.private import PRIVATE_FILE_MODE, private_dir, private_file

log = logging.getLogger("gateway.db")

_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)(?:\.(postgres))?\.sql")
POSTGRES = "postgres"
# Any fixed bigint will do; it only has to be the same for every gateway process.
_PG_LOCK = 0x6C6C_616D_6167_7731
# The query parameter of a PostgreSQL URL that says a PgBouncer pools transactions.
PGBOUNCER = "pgbouncer"
_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL
)"""


class Migration(NamedTuple):
    version: int
    name: str
    sql: str
    only: str | None = None  # the one kind of database it is for (POSTGRES), or None: all


class MigrationError(RuntimeError):
    """The migrations on disk and the ones recorded in the database disagree."""


def load_migrations(package: str, folder: str = "migrations") -> list[Migration]:
    """The `NNN_name.sql` files of a package's data folder, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(
                f"{package}/{folder}/{entry.name}: name it NNN_name.sql "
                "(three digits, then lowercase letters, digits and underscores; "
                "NNN_name.postgres.sql for PostgreSQL alone)"
            )
        version = int(match[1])
        if version in found:
            raise MigrationError(f"{package}/{folder}: two migrations have version {version}")
        found[version] = Migration(version, match[2], entry.read_text("utf-8"), match[3])
    return [found[version] for version in sorted(found)]


def _check_name(version: int, recorded: str, name: str) -> None:
    if recorded != name:
        raise MigrationError(
            f"schema_migrations has version {version} as {recorded!r}, but the migration with "
            f"that version is {name!r}: give the new migration an unused version number"
        )


if TYPE_CHECKING:  # asyncpg's classes are generic only in its stubs
    PgConnection: TypeAlias = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]


async def migrate_postgres(
    target: asyncpg.Pool[Any] | PgConnection, migrations: Iterable[Migration | tuple[int, str, str]]
) -> list[Migration]:
    """Apply the pending migrations; returns those this call applied.

    Every transaction takes one advisory lock first, so processes migrating at once
    run one after another, and each sees what the others recorded.
    """
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            return await migrate_postgres(conn, migrations)
    async with target.transaction():
        await target.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK)
        await target.execute(_TABLE)
    applied: list[Migration] = []
    for migration in sorted(Migration(*m) for m in migrations):
        if migration.only not in (None, POSTGRES):
            continue
        if await _apply_postgres(target, migration):
            log.info("applied migration %03d_%s", migration.version, migration.name)
            applied.append(migration)
    return applied


async def _apply_postgres(conn: PgConnection, migration: Migration) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK)
        recorded = await conn.fetchval(
            "SELECT name FROM schema_migrations WHERE version = $1", migration.version
        )
        if recorded is not None:
            _check_name(migration.version, recorded, migration.name)
            return False
        await conn.execute(migration.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            datetime.now(UTC),
        )
    return True


async def migrate_sqlite(
    db: aiosqlite.Connection, migrations: Iterable[Migration | tuple[int, str, str]]
) -> list[Migration]:
    """Apply the pending migrations; returns those this call applied.

    `BEGIN IMMEDIATE` takes SQLite's write lock before reading what is recorded, so
    processes sharing the file migrate one after another (they wait up to the busy timeout).
    """
    await db.execute(_TABLE)
    applied: list[Migration] = []
    for migration in sorted(Migration(*m) for m in migrations):
        if migration.only is not None:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            rows = await db.execute_fetchall(
                "SELECT name FROM schema_migrations WHERE version = ?", (migration.version,)
            )
            if rows:
                _check_name(migration.version, next(iter(rows))[0], migration.name)
                await db.rollback()
                continue
            # Not executescript(): it commits first, which would split the transaction.
            for statement in split_sqlite(migration.sql):
                await db.execute(statement)
            applied_at = datetime.now(UTC).isoformat(timespec="microseconds")
            await db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, applied_at),
            )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        log.info("applied migration %03d_%s", migration.version, migration.name)
        applied.append(migration)
    return applied


def split_sqlite(script: str) -> Iterator[str]:
    """The statements of a SQL script, cut where SQLite itself sees a complete statement."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if not line.strip().startswith("--")
    ).strip()
    if rest:
        yield rest  # an unterminated last statement; SQLite reports it if it is broken


async def open_postgres_pool(
    dsn: str,
    *,
    max_size: int = 4,
    wait_seconds: float = 5.0,
    migrations: Iterable[Migration | tuple[int, str, str]] = (),
) -> asyncpg.Pool[asyncpg.Record]:
    """A small pool (the gateway's queries are short, and replicas share one server), with
    `migrations` applied; nothing is left open when they fail."""
    dsn, options = pool_options(dsn)
    pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=wait_seconds,
        timeout=wait_seconds,
        **options,
    )
    try:
        if pending := list(migrations):
            await migrate_postgres(pool, pending)
    except BaseException:
        await pool.close()
        raise
    return pool


def pool_options(dsn: str) -> tuple[str, dict[str, Any]]:
    """The URL for asyncpg, and its options: `pgbouncer=true` in the URL's query (taken out:
    PostgreSQL would take it for a setting) says that a PgBouncer in transaction pooling
    mode is in between, where a prepared statement may not outlive its transaction, so
    asyncpg keeps none (PgBouncer before 1.21 cannot route them to their connection)."""
    url = urlsplit(dsn)
    query = parse_qsl(url.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != PGBOUNCER]
    if len(kept) == len(query):
        return dsn, {}
    flag = next(v for k, v in query if k == PGBOUNCER).lower()
    if flag not in ("true", "false"):
        raise ValueError(f"{PGBOUNCER}= in a PostgreSQL URL takes true or false, not {flag!r}")
    dsn = urlunsplit(url._replace(query=urlencode(kept)))
    return dsn, {"statement_cache_size": 0} if flag == "true" else {}


def _private_sqlite(path: Path) -> None:
    """The database file and its WAL companions, 0600 before SQLite opens them: SQLite
    creates `-wal` and `-shm` with the mode of the database file."""
    private_dir(path.parent)
    os.close(private_file(path, os.O_RDWR))
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if companion.stat().st_mode & 0o077:
                companion.chmod(PRIVATE_FILE_MODE)


async def open_sqlite(
    path: Path,
    *,
    wait_seconds: float = 5.0,
    migrations: Iterable[Migration | tuple[int, str, str]] = (),
) -> aiosqlite.Connection:
    """A connection in autocommit mode with WAL, so readers never wait for the writer, with
    `migrations` applied; nothing is left open when they fail. Each commit is fsynced
    (`synchronous = FULL`): the usage writer drops rows from its journal once committed,
    so a commit must survive power loss; it costs one fsync per batch."""
    _private_sqlite(path)
    db = await aiosqlite.connect(path, timeout=wait_seconds, isolation_level=None)
    try:
        await _set_wal(db, wait_seconds)
        await db.execute("PRAGMA synchronous = FULL")
        if pending := list(migrations):
            await migrate_sqlite(db, pending)
    except BaseException:
        await db.close()
        raise
    return db


async def _set_wal(db: aiosqlite.Connection, wait_seconds: float) -> None:
    """Switch to WAL; SQLite answers "locked" at once (no busy wait) while another
    connection switches it, so retry for up to the busy timeout."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
