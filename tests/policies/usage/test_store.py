"""The embedded SQLite store keeps working after a caller gives up on an insert."""

from __future__ import annotations

import asyncio
from pathlib import Path

from policies.usage.sqlite_store import SqliteUsageStore
from tests.support.usage import row


async def test_an_insert_cancelled_while_its_transaction_begins_leaves_none_open(
    tmp_path: Path,
) -> None:
    # The writer's task is cancelled at shutdown wherever it is. aiosqlite still runs a
    # statement whose caller was cancelled: a BEGIN with no ROLLBACK after it would leave
    # a transaction open, and every later insert would fail ("within a transaction").
    store = SqliteUsageStore(tmp_path / "u.db")
    await store.connect()
    try:
        for n in range(20):
            task = asyncio.create_task(store.insert([row(n)]))
            await asyncio.sleep(0)  # the task now waits on BEGIN IMMEDIATE
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert await store.insert([row(100 + n)]) == 1
    finally:
        await store.close()
