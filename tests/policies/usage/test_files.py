"""Data files are private to the gateway's user: directory 0700, files 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.private
from gateway.db import open_sqlite
from gateway.metrics import Metrics
from policies.usage.journal import Journal, append_rejected
from policies.usage.metrics import UsageMetrics
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.writer import UsageWriter
from tests.support.usage import FAST, row
from tests.support.waiting import eventually


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the common default: files 0644, directories 0755
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_directory_and_every_file_in_it_are_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SqliteUsageStore(data / "gateway.db")
    usage = UsageWriter(store, Journal(data), UsageMetrics(Metrics()), FAST)
    await usage.start()
    usage.submit(row(1))
    usage.submit(row(2, subject="\ud800"))  # set aside: the rejected file exists too
    await eventually(lambda: (data / "usage-rejected.jsonl").exists() and store.conn is not None)
    await eventually(lambda: (data / "gateway.db-wal").exists())
    await usage.close()
    assert mode(data) == 0o700
    names = {p.name: mode(p) for p in data.iterdir()}
    assert names.keys() >= {"gateway.db", "usage-journal-0.jsonl", "usage-rejected.jsonl"}
    assert set(names.values()) == {0o600}, names


async def test_an_existing_data_directory_and_files_open_to_others_are_tightened(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    for name in ("gateway.db", "gateway.db-wal", "usage-journal-0.jsonl", "usage-rejected.jsonl"):
        (data / name).touch(mode=0o644)
        (data / name).chmod(0o644)
    db = await open_sqlite(data / "gateway.db")
    await db.close()
    journal = Journal(data)
    journal.open()
    journal.close()
    append_rejected(data, [b"{}\n"])
    assert mode(data) == 0o700
    names = {p.name: mode(p) for p in data.iterdir()}
    assert names.keys() >= {"gateway.db", "usage-journal-0.jsonl", "usage-rejected.jsonl"}
    assert set(names.values()) == {0o600}, names


def test_a_shared_sticky_directory_is_left_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    gateway.private.private_dir(shared)
    assert mode(shared) == 0o1777


async def test_sqlite_commits_are_fsynced(tmp_path: Path) -> None:
    db = await open_sqlite(tmp_path / "gateway.db")
    try:
        rows = await db.execute_fetchall("PRAGMA synchronous")
        assert list(rows) == [(2,)]  # FULL: a commit survives power loss
    finally:
        await db.close()
