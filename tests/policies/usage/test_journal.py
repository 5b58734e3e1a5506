"""The local journal: in order, fsynced, emptied only once everything is committed."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.usage.journal import Journal
from tests.policies.usage.test_report import row


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path)
    opened.open()
    yield opened
    opened.close()


def test_rows_come_back_in_the_order_they_were_written(journal: Journal) -> None:
    journal.append([row(1), row(2)])
    journal.append([row(3)])
    rows, end = journal.read(10)
    assert [r.id for r in rows] == ["id-1", "id-2", "id-3"]
    assert rows[0] == row(1)
    assert end == journal.size


def test_the_file_is_emptied_only_when_everything_is_committed(journal: Journal) -> None:
    journal.append([row(1), row(2), row(3)])
    first, end = journal.read(2)
    journal.commit(end)
    assert journal.size > 0
    assert journal.pending_bytes == journal.size - end
    rest, end = journal.read(10)
    assert [r.id for r in first + rest] == ["id-1", "id-2", "id-3"]
    journal.commit(end)
    assert journal.path is not None
    assert journal.path.stat().st_size == 0
    assert journal.pending_bytes == 0


def test_a_reopened_journal_holds_what_the_last_run_left(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    first.append([row(1), row(2)])
    first.close()
    again = Journal(tmp_path)
    again.open()
    assert [r.id for r in again.read(10)[0]] == ["id-1", "id-2"]
    again.close()


def test_a_torn_last_line_from_a_crash_is_dropped(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    first.append([row(1)])
    assert first.path is not None
    with first.path.open("ab") as handle:
        handle.write(b'{"id": "id-2", "request_')
    first.close()
    again = Journal(tmp_path)
    again.open()
    assert [r.id for r in again.read(10)[0]] == ["id-1"]
    assert again.path is not None
    assert again.path.read_bytes().endswith(b"\n")
    again.close()


def test_an_unreadable_line_is_skipped_and_the_rest_kept(journal: Journal) -> None:
    journal.append([row(1)])
    assert journal.path is not None
    with journal.path.open("ab") as handle:
        handle.write(b"not json\n")
        handle.write(b'{"id": "only an id"}\n')
    journal.size = journal.path.stat().st_size
    journal.append([row(2)])
    rows, end = journal.read(10)
    assert [r.id for r in rows] == ["id-1", "id-2"]
    assert end == journal.size


def test_two_gateways_sharing_a_data_dir_get_a_journal_each(tmp_path: Path) -> None:
    first, second = Journal(tmp_path), Journal(tmp_path)
    first.open()
    second.open()
    assert first.path != second.path
    first.close()
    second.close()


def test_a_batch_that_fails_part_way_leaves_nothing_behind(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal.append([row(1)])
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))  # half the batch reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        journal.append([row(2), row(3)])
    monkeypatch.setattr(os, "write", real_write)
    journal.append([row(4), row(5)])
    rows, end = journal.read(10)
    assert [r.id for r in rows] == ["id-1", "id-4", "id-5"]  # no torn line, none skipped
    assert end == journal.size
    assert journal.path is not None
    assert journal.path.stat().st_size == journal.size
