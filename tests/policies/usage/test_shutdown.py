"""Closing the writer: it stops where it waits, never in the middle of a statement; one
that does not stop in time is cancelled; cancelled anywhere, it loses no row."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.local import free_port
from policies.usage.journal import Journal
from policies.usage.record import UsageRow
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore, UsageStore
from policies.usage.writer import UsageWriter
from tests.support.usage import count, pg_rows, row, sample, writer
from tests.support.waiting import eventually


class HeldStore(SqliteUsageStore):
    """Holds every insert until released, counting the callers that gave up on one."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.abandoned = 0

    async def insert(self, rows: Sequence[UsageRow]) -> int:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        return await super().insert(rows)


def cancelled(usage: UsageWriter) -> bool:
    task = usage._task
    assert task is not None
    assert task.done()
    return task.cancelled()


def retries(usage: UsageWriter) -> float:
    labels = {"dependency": "postgres", "action": "retry"}
    value = usage.metrics.registry.get_sample_value("llama_gateway_dependency_errors_total", labels)
    return value or 0.0


def journal_lines(tmp_path: Path) -> int:
    return (tmp_path / "data" / "usage-journal-0.jsonl").read_bytes().count(b"\n")


async def test_close_lets_the_insert_in_progress_finish(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "u.db")
    usage = writer(store, tmp_path)
    await usage.start()
    usage.submit(row(0))
    await store.entered.wait()
    closing = asyncio.create_task(usage.close())
    await asyncio.sleep(0)  # close() has begun
    store.release.set()
    await closing
    assert store.abandoned == 0
    assert not cancelled(usage)
    assert sample(usage.metrics, "database") == 1
    assert journal_lines(tmp_path) == 0


async def test_close_ends_a_retry_backoff_without_cancelling_the_writer(tmp_path: Path) -> None:
    dead = PostgresUsageStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    usage = writer(dead, tmp_path, retry_initial_seconds=3600, retry_max_seconds=3600)
    await usage.start()
    usage.submit(row(0))
    await eventually(lambda: retries(usage) == 1)  # the writer waits an hour to retry
    await usage.close()  # returns long before the hour is over
    assert not cancelled(usage)
    assert journal_lines(tmp_path) == 1


async def test_close_ends_the_pause_before_a_restart_without_cancelling_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(journal: Journal, max_rows: int, end: int) -> Any:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(Journal, "read", broken)
    usage = writer(SqliteUsageStore(tmp_path / "u.db"), tmp_path, retry_initial_seconds=3600)
    await usage.start()
    usage.submit(row(0))
    await eventually(lambda: usage.restarts == 1)
    await usage.close()
    assert not cancelled(usage)
    assert journal_lines(tmp_path) == 1


async def test_a_writer_that_does_not_stop_in_time_is_cancelled(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "u.db")  # never released: a statement that hangs
    usage = writer(store, tmp_path, write_timeout_seconds=3600, shutdown_seconds=0.2)
    await usage.start()
    usage.submit(row(0))
    await store.entered.wait()
    await usage.close()
    assert cancelled(usage)
    assert journal_lines(tmp_path) == 1  # kept for the next start


async def test_a_writer_cancelled_at_any_await_loses_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    # Cancelled while it waits at its k-th await of a drain, for every k: in a statement,
    # a thread's read, fsync or compaction copy (it compacts at every drain here), or
    # idle; then closed, which drains what is left.
    monkeypatch.setattr(Journal, "worth_compacting", lambda journal: True)
    expected: list[str] = []
    k = idle = 0
    while idle < 3:  # until the writer had nothing left to do at its k-th await
        store: UsageStore = PostgresUsageStore(url) if url else SqliteUsageStore(tmp_path / "u.db")
        ids = range(100 * k, 100 * k + 20)
        busy = await submit_and_cancel(writer(store, tmp_path / str(k), batch_size=7), ids, k)
        assert journal_lines(tmp_path / str(k)) == 0, f"cancelled at await {k}"
        expected.extend(f"id-{n}" for n in ids)
        idle = 0 if busy else idle + 1
        k += 1
    assert k > 10  # the awaits of three batches, at least
    assert sorted(await stored_ids(url, tmp_path)) == sorted(expected)


async def submit_and_cancel(usage: UsageWriter, ids: range, k: int) -> bool:
    """Rows to a connected writer, which is cancelled at its k-th await, then closed;
    whether rows were still on their way to the database when it was cancelled."""
    await usage.start()
    await eventually(lambda: usage.healthy)
    for n in ids:
        usage.submit(row(n))
    busy = await cancel_at_await(usage, k)
    await usage.close()
    return busy


async def cancel_at_await(usage: UsageWriter, k: int) -> bool:
    """Cancel the writer's task while it waits at its k-th await from now (0 first);
    whether rows were still on their way to the database then."""
    task = usage._task
    assert task is not None
    seen: object = None
    while True:
        waiter = task._fut_waiter  # type: ignore[attr-defined]  # what the task waits on
        if waiter is not None and waiter is not seen:
            if k == 0:
                busy = usage.queued() > 0
                task.cancel()
                return busy
            seen, k = waiter, k - 1
        await asyncio.sleep(0)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, pg_url: str) -> str:
    """The database URL of the store, empty for the embedded one."""
    return pg_url if request.param == "postgres" else ""


async def stored_ids(url: str, tmp_path: Path) -> list[str]:
    if url:
        return [r["id"] for r in await pg_rows(url)]
    store = SqliteUsageStore(tmp_path / "u.db")
    await store.connect()
    try:
        assert await count(store) > 0
        rows = await store._db().execute_fetchall("SELECT id FROM usage_records")
        return [str(r[0]) for r in rows]
    finally:
        await store.close()
