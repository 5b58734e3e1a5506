"""The writer on its own: overflow, shutdown with the database down, rows it can never store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from gateway.local import free_port
from policies.usage.journal import Journal
from policies.usage.record import UsageRow
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore
from tests.support.usage import count, pg_rows, row, sample, wait_for_rows, writer
from tests.support.waiting import eventually


async def test_a_burst_beyond_the_memory_cap_goes_to_the_journal_at_once(tmp_path: Path) -> None:
    store = SqliteUsageStore(tmp_path / "u.db")
    usage = writer(store, tmp_path, queue_size=5, batch_size=5)
    await usage.start()
    for n in range(40):  # in one go: the writer has no chance to run in between
        usage.submit(row(n))
    assert usage.queued() == 40
    assert usage.metrics.registry.get_sample_value("llama_gateway_usage_queue_depth") == 5
    assert journal_ids(tmp_path) == [f"id-{n}" for n in range(35)]  # the memory cap: written

    async def all_stored() -> bool:
        return store.conn is not None and await count(store) == 40

    await eventually(all_stored)
    assert sample(usage.metrics, "journal") == 40
    assert sample(usage.metrics, "database") == 40
    assert sample(usage.metrics, "dropped") == 0
    await usage.close()


def journal_ids(tmp_path: Path) -> list[str]:
    data = (tmp_path / "data" / "usage-journal-0.jsonl").read_bytes()
    return [orjson.loads(line)[0] for line in data.splitlines()]  # arrays, the id first


async def test_shutdown_with_the_database_down_keeps_rows_for_the_next_start(
    tmp_path: Path, pg_url: str
) -> None:
    dead = PostgresUsageStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    first = writer(dead, tmp_path, flush_seconds=60)
    await first.start()
    for n in range(25):
        first.submit(row(n))
    await first.close()  # returns although the database never answered
    journal = tmp_path / "data" / "usage-journal-0.jsonl"
    assert journal.read_bytes().count(b"\n") == 25

    second = writer(PostgresUsageStore(pg_url), tmp_path)
    await second.start()
    rows = await wait_for_rows(pg_url, 25)
    await eventually(lambda: second.journal.pending_bytes == 0)
    await second.close()
    assert sorted(r["id"] for r in rows) == sorted(f"id-{n}" for n in range(25))
    assert journal.read_bytes() == b""


async def test_a_row_the_database_refuses_for_good_is_set_aside_not_retried_forever(
    tmp_path: Path, pg_url: str
) -> None:
    usage = writer(PostgresUsageStore(pg_url), tmp_path)
    await usage.start()
    for n in range(9):
        usage.submit(row(n))
    usage.submit(row(9, status=2**40))  # no integer column holds that
    await wait_for_rows(pg_url, 9)
    await eventually(lambda: sample(usage.metrics, "rejected") == 1)
    await usage.close()
    assert len(await pg_rows(pg_url)) == 9
    rejected = (tmp_path / "data" / "usage-rejected.jsonl").read_bytes()
    assert rejected.count(b"\n") == 1
    assert b'"id-9"' in rejected


@pytest.mark.parametrize("destination", ["database", "journal"])
async def test_close_flushes_rows_submitted_just_before(
    tmp_path: Path, pg_url: str, destination: str
) -> None:
    url = pg_url if destination == "database" else f"postgresql://x@127.0.0.1:{free_port()}/t"
    usage = writer(PostgresUsageStore(url), tmp_path, flush_seconds=60)
    await usage.start()
    for n in range(7):
        usage.submit(row(n))
    await usage.close()
    journal = (tmp_path / "data" / "usage-journal-0.jsonl").read_bytes()
    if destination == "database":
        assert len(await pg_rows(pg_url)) == 7
        assert journal == b""
    else:
        assert journal.count(b"\n") == 7


class CountingStore(SqliteUsageStore):
    """The embedded store, noting the size of every batch it is given."""

    batches: list[int]

    async def insert(self, rows: Sequence[UsageRow]) -> int:
        self.batches.append(len(rows))
        return await super().insert(rows)


async def test_rows_are_written_in_batches_not_one_by_one(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "u.db")
    store.batches = []
    usage = writer(store, tmp_path, batch_size=100, flush_seconds=60)
    await usage.start()
    await eventually(lambda: usage.healthy)
    for n in range(250):
        usage.submit(row(n))
    # A full batch wakes the writer, which then takes everything queued.
    await eventually(lambda: sum(store.batches) == 250)
    assert store.batches == [100, 100, 50]
    for n in range(250, 280):
        usage.submit(row(n))
    await asyncio.sleep(0.2)
    assert store.batches == [100, 100, 50]  # a partial batch waits for flush_seconds
    await usage.close()  # or for the shutdown
    assert store.batches == [100, 100, 50, 30]


async def test_shutdown_during_a_compaction_never_runs_a_second_one_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy outlasts close()'s patience, so the writer is cancelled in it; a cancelled
    # thread keeps running: a second copy into the same temporary file while the first
    # still writes would mix the two into the journal that replaces the old one.
    entered, release = threading.Event(), threading.Event()
    copying: list[int] = []
    most = [0]
    copy_tail = Journal.copy_tail

    def slow_copy(journal: Journal, end: int) -> Path:
        copying.append(1)
        most[0] = max(most[0], len(copying))
        try:
            if not entered.is_set():
                entered.set()
                release.wait(10)  # the first copy is still running when close() comes
            return copy_tail(journal, end)
        finally:
            copying.pop()

    monkeypatch.setattr(Journal, "worth_compacting", lambda journal: True)
    monkeypatch.setattr(Journal, "copy_tail", slow_copy)
    store = SqliteUsageStore(tmp_path / "u.db")
    usage = writer(store, tmp_path)
    await usage.start()
    usage.submit(row(0))
    await asyncio.to_thread(entered.wait, 10)
    usage.submit(row(1))
    try:
        await usage.close()
    finally:
        release.set()
    assert most[0] == 1
    check = SqliteUsageStore(tmp_path / "u.db")
    await check.connect()
    try:
        assert await count(check) == 2
    finally:
        await check.close()
