"""API keys (SPEC F2.4): the `sk-gw_<id>_<secret>` format, and stores that keep only hashes.

A key is 12 hex characters of id (looked up) and 32 random bytes of secret. Keys are
high-entropy, so a fast hash (SHA-256) is the right one: a slow password hash would only
cost CPU on every request. Every check reads the database, so a revocation counts on
every replica at the next request.
"""

from __future__ import annotations

import builtins
import hmac
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg

from gateway.credentials import hash_secret
from gateway.db import (
    Migration,
    load_migrations,
    open_postgres_pool,
    open_sqlite,
)
from gateway.storage import postgres_url
from policies.auth.text import sanitised

PREFIX = "sk-gw_"
_KEY = re.compile(r"sk-gw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})", re.ASCII)
_COLUMNS = "id, key_hash, owner, tier, created_at, expires_at, revoked_at"
_ID_TRIES = 3  # 48-bit random ids: a clash is rare, two in a row never happen


def new_key() -> tuple[str, str]:
    """A fresh (id, plaintext key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_key(presented: str) -> str | None:
    """The id of a key in our format, or None for anything else."""
    match = _KEY.fullmatch(presented)
    return match[1] if match else None


def key_matches(presented: str, key_hash: str) -> bool:
    """Constant-time check of a presented key against its stored `hash_secret` (of the
    full key, as a static key in YAML gives it)."""
    return hmac.compare_digest(hash_secret(presented).encode(), key_hash.encode())


def migrations() -> list[Migration]:
    """The auth schema; `start()` applies it, and so will `llama-gateway db migrate`."""
    return load_migrations("policies.auth")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    owner: str
    tier: str
    created_at: datetime
    expires_at: datetime | None
    revoked: bool
    key_hash: str

    def usable(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


class Reason(StrEnum):
    """Why a key was refused: for logs and metrics only, never for the caller."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Verdict:
    key: ApiKey | None  # set only when the key is good
    reason: Reason | None = None  # set only when it is not
    key_id: str | None = None  # the presented id, when it had one: safe to log

    @property
    def ok(self) -> bool:
        return self.key is not None


def judge(presented: str, key_id: str, key: ApiKey | None, now: datetime) -> Verdict:
    if key is None:
        return Verdict(None, Reason.UNKNOWN, key_id)
    # The secret first: without it, nobody learns whether a key is revoked or expired.
    if not key_matches(presented, key.key_hash):
        return Verdict(None, Reason.MISMATCH, key_id)
    if key.revoked:
        return Verdict(None, Reason.REVOKED, key_id)
    if not key.usable(now):
        return Verdict(None, Reason.EXPIRED, key_id)
    return Verdict(key, None, key_id)


class KeyStore(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def create(
        self, owner: str, tier: str, expires_at: datetime | None = None
    ) -> tuple[str, ApiKey]: ...
    async def get(self, key_id: str) -> ApiKey | None: ...
    async def list(self) -> builtins.list[ApiKey]: ...
    async def revoke(self, key_id: str) -> bool: ...
    async def verify(self, presented_key: str) -> Verdict: ...


def _utc(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return None if value is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def _row_to_key(row: Sequence[Any]) -> ApiKey:
    key_id, key_hash, owner, tier, created_at, expires_at, revoked_at = row
    created = _utc(created_at)
    assert created is not None  # NOT NULL in the schema
    # Owners are written by admins, but by any tool: keep their text sane for logs and rows.
    # Replaced, not refused: the principal is the key's id, so nothing merges.
    return ApiKey(
        key_id,
        sanitised(owner),
        tier,
        created,
        _utc(expires_at),
        revoked_at is not None,
        key_hash,
    )


class _SqlKeyStore(ABC):
    """What both stores share; each subclass only speaks its database's dialect."""

    async def create(
        self, owner: str, tier: str, expires_at: datetime | None = None
    ) -> tuple[str, ApiKey]:
        if not owner or not tier:
            raise ValueError("a key needs a non-empty owner and tier")
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware (for example in UTC)")
        for _ in range(_ID_TRIES):
            key_id, plaintext = new_key()
            created, expires = datetime.now(UTC), _utc(expires_at)
            key = ApiKey(key_id, owner, tier, created, expires, False, hash_secret(plaintext))
            if await self._insert(key):
                return plaintext, key
        raise RuntimeError(f"no free key id after {_ID_TRIES} tries; try again")

    async def verify(self, presented_key: str) -> Verdict:
        key_id = parse_key(presented_key)
        if key_id is None:
            return Verdict(None, Reason.MALFORMED)
        key = await self.get(key_id)
        return judge(presented_key, key_id, key, datetime.now(UTC))

    @abstractmethod
    async def _insert(self, key: ApiKey) -> bool:
        """Store a new key; False if its id is taken."""

    @abstractmethod
    async def get(self, key_id: str) -> ApiKey | None: ...


class PostgresKeyStore(_SqlKeyStore):
    """Keys in PostgreSQL, shared by every replica."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    @property
    def _db(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise RuntimeError("PostgresKeyStore used before start()")
        return self._pool

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = await open_postgres_pool(self._dsn, migrations=migrations())

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _insert(self, key: ApiKey) -> bool:
        status = await self._db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)"
            " ON CONFLICT (id) DO NOTHING",
            *(key.id, key.key_hash, key.owner, key.tier, key.created_at, key.expires_at),
        )
        return bool(status == "INSERT 0 1")

    async def get(self, key_id: str) -> ApiKey | None:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return None if row is None else _row_to_key(tuple(row))

    async def list(self) -> builtins.list[ApiKey]:
        rows = await self._db.fetch(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [_row_to_key(tuple(row)) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        found = await self._db.fetchval(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING id",
            key_id,
            datetime.now(UTC),
        )
        return found is not None


class SqliteKeyStore(_SqlKeyStore):
    """Keys in a local SQLite file: the embedded store when no database URL is set."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteKeyStore used before start()")
        return self._conn

    async def start(self) -> None:
        if self._conn is not None:
            return
        self._conn = await open_sqlite(self.path, migrations=migrations())

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _insert(self, key: ApiKey) -> bool:
        values = (key.id, key.key_hash, key.owner, key.tier, _iso(key.created_at))
        async with self._db.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (id) DO NOTHING",
            (*values, _iso(key.expires_at)),
        ) as cursor:
            return cursor.rowcount == 1

    async def get(self, key_id: str) -> ApiKey | None:
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
        )
        return next((_row_to_key(row) for row in rows), None)

    async def list(self) -> builtins.list[ApiKey]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )
        return [_row_to_key(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        async with self._db.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (_iso(datetime.now(UTC)), key_id),
        ) as cursor:
            return cursor.rowcount == 1


def open_store(database_url: str | None, sqlite_path: Path) -> KeyStore:
    """PostgreSQL when a database URL is configured, else the SQLite file; call `start()`."""
    url = postgres_url(database_url)
    return SqliteKeyStore(sqlite_path) if url is None else PostgresKeyStore(url)
