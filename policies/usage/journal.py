"""The local journal: every usage row, on disk from the moment its request completes
until the database has committed it.

An append-only file of JSON lines (one row each, an array in column order). The event
loop appends the rows of each turn with one `write()` and no fsync: what the kernel holds
survives a crash of the process; the writer fsyncs every `flush_seconds`, so power loss
takes at most that much.
The writer reads rows from the front, in order, and moves the front (`commit`) once the
database has them; the file is emptied when everything in it is committed, and
compacted (the uncommitted tail copied to a new file renamed over it) when a busy
gateway never lets it run empty. A crash during replay means some rows are sent again,
which the database ignores (inserts are idempotent on the record id).

Each gateway process claims a journal file with an exclusive `flock`: the first free of
`usage-journal-0.jsonl`, `-1`, ... under the data directory. A restarted process claims
the file its predecessor left and replays it; replicas sharing a data directory each
get their own file. `append` and `commit` run on the event loop (no await between the
size they read and the write they make); `read`, `sync` and the compaction's copy block
on the disk: the writer runs them in a thread, one at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

import orjson

from gateway.private import private_dir, private_file
from policies.usage.record import UsageRow, row_from_json

log = logging.getLogger("policies.usage.journal")

MAX_FILES = 64
# Bytes read per batch: enough for `max_rows` rows of this size (they are ~0.3 KB, at
# most ~6 KB with every text column full), at least READ_BYTES (one longer line still fits).
ROW_BYTES = 1024
READ_BYTES = 64 << 10
COMPACT_BYTES = 4 << 20  # committed bytes at the front worth a compaction
REJECTED = "usage-rejected.jsonl"


class JournalError(RuntimeError):
    pass


class Journal:
    def __init__(self, directory: Path, stem: str = "usage-journal") -> None:
        self.directory = directory
        self.stem = stem
        self.path: Path | None = None
        self.size = 0  # bytes in the file
        self.offset = 0  # bytes already committed to the database
        self.rows = 0  # rows after `offset`
        self.earlier = 0  # bytes of `offset..` an earlier run left (replayed, not new)
        self._fd: int | None = None
        self._synced = True  # nothing written since the last fsync

    @property
    def pending_bytes(self) -> int:
        """Bytes of rows not yet in the database."""
        return self.size - self.offset

    @property
    def closed(self) -> bool:
        return self._fd is None

    def open(self) -> None:
        private_dir(self.directory)
        for n in range(MAX_FILES):
            path = self.directory / f"{self.stem}-{n}.jsonl"
            fd = _open_locked(path)
            if fd is None:
                continue
            self._fd, self.path = fd, path
            self._drop_torn_tail()
            _fsync_directory(self.directory)
            if self.size:
                log.info(
                    "usage journal %s holds %d bytes (%d rows) from an earlier run; replaying them",
                    path,
                    self.size,
                    self.rows,
                )
            return
        raise JournalError(
            f"all {MAX_FILES} usage journal files in {self.directory} are locked by running "
            "gateways; give this one its own storage.data_dir"
        )

    def _drop_torn_tail(self) -> None:
        """A crash in the middle of an append leaves half a line, which nobody was
        answered for yet: drop it."""
        fd = self._handle()
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            os.ftruncate(fd, keep)
            log.warning(
                "usage journal %s: dropped a torn last line (%d bytes)", self.path, len(data) - keep
            )
        self.size = self.earlier = keep
        self.rows = data.count(b"\n")

    def _handle(self) -> int:
        if self._fd is None:
            raise JournalError("the usage journal is not open")
        return self._fd

    def append(self, data: bytes, rows: int) -> None:
        """Write whole lines at the end (event loop; no fsync). A write that fails part-way
        is cut off again, so the file always ends with a whole line."""
        fd = self._handle()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):  # the next append starts at `size` anyway
                os.ftruncate(fd, self.size)
            raise
        self.size += len(data)
        self.rows += rows
        self._synced = False

    def sync(self) -> None:
        """fsync what was appended since the last call (a thread)."""
        if not self._synced and self._fd is not None:
            # Marked before the fsync: rows appended while it runs wait for the next one.
            self._synced = True
            try:
                os.fsync(self._fd)
            except OSError:
                self._synced = False  # the next call tries again, even with nothing new
                raise

    def read(self, max_rows: int, end: int) -> tuple[list[UsageRow], list[bytes], int]:
        """Up to `max_rows` rows between the commit offset and `end` (a thread), the lines
        that are no row (for setting aside), and the offset after them."""
        size = min(end - self.offset, max(READ_BYTES, max_rows * ROW_BYTES))
        data = os.pread(self._handle(), size, self.offset)
        rows: list[UsageRow] = []
        bad: list[bytes] = []
        position = 0
        while len(rows) + len(bad) < max_rows:
            stop = data.find(b"\n", position) + 1
            if stop == 0:
                break
            line = data[position:stop]
            position = stop
            try:
                rows.append(row_from_json(orjson.loads(line)))
            except (ValueError, TypeError, AttributeError):  # orjson's errors are ValueErrors
                bad.append(line)
        return rows, bad, self.offset + position

    def commit(self, offset: int, rows: int) -> None:
        """Everything before `offset` (`rows` rows) is in the database (event loop)."""
        self.earlier = max(0, self.earlier - (offset - self.offset))
        self.offset = offset
        self.rows -= rows
        if self.offset >= self.size:  # all committed: start over at the front
            os.ftruncate(self._handle(), 0)
            self.size = self.offset = self.rows = 0

    def worth_compacting(self) -> bool:
        """Enough committed at the front, and a tail no bigger than that to copy."""
        return self.offset >= COMPACT_BYTES and self.pending_bytes <= self.offset

    def copy_tail(self, end: int) -> Path:
        """Compaction, part 1 (a thread): the rows from the commit offset to `end` into a
        fresh file, fsynced; returns its path."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = private_file(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            start = self.offset
            while start < end:
                chunk = os.pread(self._handle(), min(end - start, 4 << 20), start)
                if not chunk:  # emptied under the copy: by the drain of a shutdown
                    raise JournalError(f"the usage journal is shorter than {end} bytes")
                _write_all(fd, chunk)
                start += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def swap(self, tmp: Path, copied_until: int) -> None:
        """Compaction, part 2 (event loop, so no append runs meanwhile): what was appended
        since part 1, then the new file takes the old one's name and lock."""
        assert self.path is not None
        fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, os.pread(self._handle(), self.size - copied_until, copied_until))
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._handle())
        self._fd = fd
        self.size -= self.offset
        self.offset = 0
        self._synced = False  # the rows appended since part 1, and the rename

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock


def _open_locked(path: Path) -> int | None:
    """The journal file at `path`, locked for this process; None if another holds it."""
    while True:
        fd = private_file(path, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # Another process may have compacted the file in between: the lock must be on
        # the file that now has the name, or two processes would share one journal.
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def append_rejected(directory: Path, lines: list[bytes]) -> None:
    """Set aside rows no database takes (`usage-rejected.jsonl`), for an admin."""
    fd = private_file(directory / REJECTED, os.O_WRONLY | os.O_APPEND)
    try:
        _write_all(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)


def row_line(row: UsageRow) -> bytes:
    """A row as a journal line, an array in column order (half the cost of an object, both
    ways); TypeError when orjson cannot encode it."""
    return orjson.dumps(tuple(row), option=orjson.OPT_APPEND_NEWLINE)


def any_line(row: UsageRow) -> bytes:
    """A row as a JSON line, whatever it holds (escapes lone surrogates, repr()s the rest):
    for the rejected file, which must take every row set aside."""
    return (json.dumps(row.as_dict(), default=repr) + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
