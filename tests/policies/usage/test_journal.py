"""The local journal: in order, emptied only once everything is committed, compacted."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from policies.usage.journal import COMPACT_BYTES, Journal, JournalError, row_line
from policies.usage.record import UsageRow
from tests.support.usage import row


def put(journal: Journal, rows: list[UsageRow]) -> None:
    journal.append(b"".join(row_line(r) for r in rows), len(rows))


def read(journal: Journal, max_rows: int = 10) -> tuple[list[UsageRow], int]:
    rows, bad, end = journal.read(max_rows, journal.size)
    assert bad == []
    return rows, end


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path)
    opened.open()
    yield opened
    opened.close()


def test_rows_come_back_in_the_order_they_were_written(journal: Journal) -> None:
    put(journal, [row(1), row(2)])
    put(journal, [row(3)])
    rows, end = read(journal)
    assert [r.id for r in rows] == ["id-1", "id-2", "id-3"]
    assert rows[0] == row(1)
    assert end == journal.size


def test_the_file_is_emptied_only_when_everything_is_committed(journal: Journal) -> None:
    put(journal, [row(1), row(2), row(3)])
    first, end = read(journal, 2)
    journal.commit(end, 2)
    assert journal.size > 0
    assert journal.pending_bytes == journal.size - end
    rest, end = read(journal)
    assert [r.id for r in first + rest] == ["id-1", "id-2", "id-3"]
    journal.commit(end, 1)
    assert journal.path is not None
    assert journal.path.stat().st_size == 0
    assert journal.pending_bytes == 0


def test_a_reopened_journal_holds_what_the_last_run_left(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    put(first, [row(1), row(2)])
    first.close()
    again = Journal(tmp_path)
    again.open()
    assert [r.id for r in read(again)[0]] == ["id-1", "id-2"]
    again.close()


def test_a_torn_last_line_from_a_crash_is_dropped(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.open()
    put(first, [row(1)])
    assert first.path is not None
    with first.path.open("ab") as handle:
        handle.write(b'{"id": "id-2", "request_')
    first.close()
    again = Journal(tmp_path)
    again.open()
    assert [r.id for r in read(again)[0]] == ["id-1"]
    assert again.path is not None
    assert again.path.read_bytes().endswith(b"\n")
    again.close()


def test_an_unreadable_line_is_handed_back_apart_and_the_rest_kept(journal: Journal) -> None:
    put(journal, [row(1)])
    assert journal.path is not None
    with journal.path.open("ab") as handle:
        handle.write(b"not json\n")
        handle.write(b'{"id": "only an id"}\n')
    journal.size = journal.path.stat().st_size
    put(journal, [row(2)])
    rows, bad, end = journal.read(10, journal.size)
    assert [r.id for r in rows] == ["id-1", "id-2"]
    assert bad == [b"not json\n", b'{"id": "only an id"}\n']
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
    put(journal, [row(1)])
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))  # half the batch reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        put(journal, [row(2), row(3)])
    monkeypatch.setattr(os, "write", real_write)
    put(journal, [row(4), row(5)])
    rows, end = read(journal)
    assert [r.id for r in rows] == ["id-1", "id-4", "id-5"]  # no torn line, none skipped
    assert end == journal.size
    assert journal.path is not None
    assert journal.path.stat().st_size == journal.size


def committed_all_but(journal: Journal, keep: int) -> int:
    """Fill the journal past the compaction threshold and commit all but `keep` rows;
    returns the number of rows written."""
    rows = [row(n) for n in range(COMPACT_BYTES // len(row_line(row(0))) + 1 + keep)]
    put(journal, rows)
    journal.commit(sum(len(row_line(r)) for r in rows[:-keep]), len(rows) - keep)
    return len(rows)


def test_a_busy_journal_is_compacted_to_its_uncommitted_tail(journal: Journal) -> None:
    count = committed_all_but(journal, 2)
    assert journal.worth_compacting()
    tail = journal.size
    tmp = journal.copy_tail(tail)
    put(journal, [row(count)])  # appended while the tail was being copied
    journal.swap(tmp, tail)
    assert journal.path is not None
    expected = [f"id-{n}" for n in (count - 2, count - 1, count)]
    assert [r.id for r in read(journal)[0]] == expected
    assert journal.path.stat().st_size == journal.size
    assert (journal.offset, journal.rows) == (0, 3)
    put(journal, [row(count + 1)])  # appends go to the new file
    assert [r.id for r in read(journal)[0]][-1] == f"id-{count + 1}"
    assert not tmp.exists()


def test_a_compacted_journal_keeps_its_lock(tmp_path: Path, journal: Journal) -> None:
    committed_all_but(journal, 1)
    journal.swap(journal.copy_tail(journal.size), journal.size)
    other = Journal(tmp_path)
    other.open()
    assert other.path != journal.path
    other.close()


def test_a_journal_of_objects_left_by_an_earlier_version_is_replayed(tmp_path: Path) -> None:
    (tmp_path / "usage-journal-0.jsonl").write_bytes(orjson.dumps(row(1).as_dict()) + b"\n")
    journal = Journal(tmp_path)
    journal.open()
    put(journal, [row(2)])
    assert read(journal)[0] == [row(1), row(2)]
    journal.close()


def test_a_compaction_copying_a_journal_emptied_under_it_ends(journal: Journal) -> None:
    # A writer cancelled at shutdown in the middle of a compaction leaves the copy running
    # in its thread; the shutdown's drain may then commit every row, which empties the
    # file: the copy finds less than it was sent for, and must end rather than spin.
    put(journal, [row(1), row(2), row(3)])
    end = journal.size
    journal.commit(end, 3)
    with pytest.raises(JournalError, match="shorter"):
        journal.copy_tail(end)


def test_a_failed_fsync_is_tried_again_at_the_next_sync(
    journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(journal, [row(1)])
    calls: list[int] = []

    def failing_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_once)
    with pytest.raises(OSError, match="I/O error"):
        journal.sync()
    journal.sync()  # nothing appended since: the rows are still not on disk
    assert len(calls) == 2
    journal.sync()
    assert len(calls) == 2  # synced now
