"""API key stores on one database, PostgreSQL or SQLite, for tests that run on both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from gateway.db import Migration, migrate_postgres, migrate_sqlite, open_sqlite
from policies.auth.keys import KeyStore, open_store


@dataclass
class Stores:
    """Opens stores on one database (a fresh PostgreSQL schema or SQLite file)."""

    url: str | None
    path: Path
    opened: list[KeyStore] = field(default_factory=list)

    def new(self) -> KeyStore:
        store = open_store(self.url, self.path)
        self.opened.append(store)
        return store

    async def started(self) -> KeyStore:
        store = self.new()
        await store.start()
        return store

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url is None:
            async with aiosqlite.connect(self.path) as db:
                return [tuple(row) for row in await db.execute_fetchall(sql)]
        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def migrate(self, wanted: list[Migration]) -> list[Migration]:
        if self.url is None:
            db = await open_sqlite(self.path)
            try:
                return await migrate_sqlite(db, wanted)
            finally:
                await db.close()
        conn = await asyncpg.connect(self.url)
        try:
            return await migrate_postgres(conn, wanted)
        finally:
            await conn.close()
