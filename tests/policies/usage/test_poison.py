"""One bad row never stops usage recording: sanitised, set aside, counted; the writer lives."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.context import RequestContext
from policies.usage.journal import Journal, row_line
from policies.usage.record import REPLACEMENT, RowBuilder
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore
from tests.support.usage import count, pg_rows, row, sample, wait_for_rows, writer
from tests.support.waiting import eventually


def test_text_no_database_or_encoder_takes_is_replaced_when_the_row_is_built() -> None:
    ctx = RequestContext(make_mocked_request("POST", "/v1/chat/completions"), "chat", 1000)
    ctx.subject, ctx.principal, ctx.model = "\ud800x", "jwt:a\x00b", "m" * 1000
    ctx.outcome, ctx.status = "internal_error", 500
    built = RowBuilder({}).build(ctx)
    assert built.subject == f"{REPLACEMENT}x"
    assert built.principal == f"jwt:a{REPLACEMENT}b"
    assert built.model == "m" * 256
    assert (built.outcome, built.status) == ("internal_error", 500)
    assert json.loads(row_line(built)) == [*built]  # serialisable, as it is


def rejected_ids(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "data" / "usage-rejected.jsonl").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines]


async def test_a_row_that_cannot_be_serialised_is_set_aside_and_the_others_go_in(
    tmp_path: Path, pg_url: str
) -> None:
    usage = writer(PostgresUsageStore(pg_url), tmp_path)
    await usage.start()
    usage.submit(row(0, subject="\ud800x"))  # as a JWT claim carries it, unsanitised
    usage.submit(row(1, prompt_tokens=2**70))  # beyond what orjson encodes
    for n in range(2, 22):
        usage.submit(row(n, outcome="internal_error", status=500))
    rows = await wait_for_rows(pg_url, 20)
    await eventually(lambda: rejected_file(tmp_path).exists())
    usage.submit(row(22))  # the writer still runs
    await wait_for_rows(pg_url, 21)
    await usage.close()
    rows = await pg_rows(pg_url)
    assert sorted(r["id"] for r in rows) == sorted(f"id-{n}" for n in range(2, 23))
    assert {r["outcome"] for r in rows if r["status"] == 500} == {"internal_error"}
    assert sorted(rejected_ids(tmp_path)) == ["id-0", "id-1"]
    assert sample(usage.metrics, "rejected") == 2


def rejected_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "usage-rejected.jsonl"


class PoisonStore(SqliteUsageStore):
    """Refuses any batch holding the row `id-13`, as a database refuses bad data."""

    batches: list[int]

    async def insert(self, rows: Any) -> int:
        self.batches.append(len(rows))
        if any(r.id == "id-13" for r in rows):
            raise ValueError("row id-13 is poison")
        return await super().insert(rows)


async def test_one_poisoned_row_keeps_no_good_row_of_its_batch_out(tmp_path: Path) -> None:
    store = PoisonStore(tmp_path / "u.db")
    store.batches = []
    usage = writer(store, tmp_path, batch_size=32, flush_seconds=60)
    await usage.start()
    await eventually(lambda: usage.healthy)
    for n in range(32):
        usage.submit(row(n))

    async def stored() -> bool:
        return await count(store) == 31

    await eventually(stored)
    assert rejected_ids(tmp_path) == ["id-13"]
    assert len(store.batches) <= 2 * 5 + 1  # halved down to the poisoned row, not one by one
    await usage.close()


async def test_a_writer_that_fails_unexpectedly_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteUsageStore(tmp_path / "u.db")
    usage = writer(store, tmp_path)
    real_read = Journal.read
    calls = {"n": 0}

    def broken_once(self: Journal, max_rows: int, end: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in the writer")
        return real_read(self, max_rows, end)

    monkeypatch.setattr(Journal, "read", broken_once)
    await usage.start()
    for n in range(5):
        usage.submit(row(n))

    async def stored() -> bool:
        return store.conn is not None and await count(store) == 5

    await eventually(stored)
    assert usage.restarts == 1
    assert usage.metrics.registry.get_sample_value("llama_gateway_usage_writer_restarts_total") == 1
    await usage.close()


async def test_while_the_journal_cannot_be_written_memory_holds_at_most_queue_size_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteUsageStore(tmp_path / "u.db")
    usage = writer(store, tmp_path, queue_size=10, flush_seconds=0.05)
    await usage.start()
    real_append = Journal.append

    def disk_full(self: Journal, data: bytes, rows: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "append", disk_full)
    for n in range(13):
        usage.submit(row(n))
    assert usage.metrics.registry.get_sample_value("llama_gateway_usage_queue_depth") == 10
    assert sample(usage.metrics, "dropped") == 3
    await eventually(lambda: errors(usage.metrics) > 0)
    monkeypatch.setattr(Journal, "append", real_append)

    async def stored() -> bool:
        return store.conn is not None and await count(store) == 10

    await eventually(stored)  # the disk is back: the rows held in memory go in
    await usage.close()


def errors(metrics: Any) -> float:
    labels = {"dependency": "disk", "action": "retry"}
    value = metrics.registry.get_sample_value("llama_gateway_dependency_errors_total", labels)
    return value or 0.0
