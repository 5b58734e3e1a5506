"""The local journal: usage rows the database has not taken yet, safe on disk.

An append-only file of JSON lines (one row each), fsynced after every batch. Replay
reads it from the front, in order; the file is emptied only once everything in it is
committed. A crash during replay means some rows are sent again, which the database
ignores (inserts are idempotent on the record id).

Each gateway process claims a journal file with an exclusive `flock`: the first free of
`usage-journal-0.jsonl`, `-1`, ... under the data directory. A restarted process claims
the file its predecessor left and replays it; replicas sharing a data directory each
get their own file. The methods block (disk I/O): the writer runs them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO

import orjson

from policies.usage.record import UsageRow

log = logging.getLogger("policies.usage.journal")

MAX_FILES = 64


class JournalError(RuntimeError):
    pass


class Journal:
    def __init__(self, directory: Path, stem: str = "usage-journal") -> None:
        self.directory = directory
        self.stem = stem
        self.path: Path | None = None
        self.size = 0  # bytes in the file
        self.offset = 0  # bytes already replayed into the database
        self._file: BinaryIO | None = None
        # The writer runs these methods in threads; a cancelled caller's thread may still
        # be writing when the next one starts (at shutdown): one at a time, always.
        self._mutex = threading.Lock()

    @property
    def pending_bytes(self) -> int:
        """Bytes of rows not yet in the database."""
        return self.size - self.offset

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for n in range(MAX_FILES):
            path = self.directory / f"{self.stem}-{n}.jsonl"
            handle = path.open("a+b")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._file, self.path = handle, path
            self._drop_torn_tail()
            _fsync_directory(self.directory)
            if self.size:
                log.info(
                    "usage journal %s holds %d bytes from an earlier run; replaying them",
                    path,
                    self.size,
                )
            return
        raise JournalError(
            f"all {MAX_FILES} usage journal files in {self.directory} are locked by running "
            "gateways; give this one its own storage.data_dir"
        )

    def _drop_torn_tail(self) -> None:
        """A crash in the middle of an append leaves half a line; its batch never
        completed its fsync, so nobody was told it was safe: drop it."""
        handle = self._handle()
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            self.size = 0
            return
        handle.seek(max(0, size - 1))
        if handle.read(1) != b"\n":
            handle.seek(0)
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            log.warning(
                "usage journal %s: dropped a torn last line (%d bytes)", self.path, size - keep
            )
            size = keep
        self.size = size

    def _handle(self) -> BinaryIO:
        if self._file is None:
            raise JournalError("the usage journal is not open")
        return self._file

    def append(self, rows: list[UsageRow]) -> int:
        """Write rows and fsync them; returns the bytes written."""
        if not rows:
            return 0
        data = _lines(rows)
        with self._mutex:
            fd = self._handle().fileno()
            # Straight to the file descriptor (no buffer that could keep half a batch), and a
            # batch that fails part-way is cut off again: a later batch must start where the
            # journal's size says, or the replay offsets would drift from the lines.
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # checked again before the next append
                    os.ftruncate(fd, self.size)
                raise
            self.size += len(data)
        return len(data)

    def read(self, max_rows: int) -> tuple[list[UsageRow], int]:
        """Up to `max_rows` rows from the replay position, and the offset after them."""
        with self._mutex:
            return self._read(max_rows)

    def _read(self, max_rows: int) -> tuple[list[UsageRow], int]:
        handle = self._handle()
        handle.seek(self.offset)
        rows: list[UsageRow] = []
        offset = self.offset
        while len(rows) < max_rows and offset < self.size:
            line = handle.readline()
            if not line.endswith(b"\n"):
                break  # cannot happen after _drop_torn_tail, unless the file was edited
            offset += len(line)
            try:
                rows.append(UsageRow.from_dict(orjson.loads(line)))
            except (ValueError, TypeError, AttributeError):  # orjson's errors are ValueErrors
                log.error(
                    "usage journal %s: skipped an unreadable line at byte %d",
                    self.path,
                    offset - len(line),
                )
        return rows, offset

    def commit(self, offset: int) -> None:
        """Everything before `offset` is in the database; empty the file once all is."""
        with self._mutex:
            self.offset = offset
            if self.offset >= self.size:
                handle = self._handle()
                handle.truncate(0)
                handle.flush()
                os.fsync(handle.fileno())
                self.size = self.offset = 0

    def close(self) -> None:
        with self._mutex:
            handle, self._file = self._file, None
            if handle is not None:
                handle.close()  # releases the flock


def append_rejected(directory: Path, rows: list[UsageRow]) -> None:
    """Set aside rows the database refuses for good (`usage-rejected.jsonl`), for an admin."""
    data = _lines(rows)
    with (directory / "usage-rejected.jsonl").open("ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _lines(rows: list[UsageRow]) -> bytes:
    return b"".join(orjson.dumps(row.as_dict(), option=orjson.OPT_APPEND_NEWLINE) for row in rows)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
