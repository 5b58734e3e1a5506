"""Rows from the request path into the journal, and rows set aside for the rejected file.

`submit` (the request path) serialises the row and keeps it for the end of the event
loop's turn, when the turn's rows go to the journal in one `write()`: from then on a
crash of the process cannot take them. Rows wait in memory only for that turn, or while
the journal's disk refuses writes: at most `queue_size` of them, beyond which new rows
are dropped and counted (blocking the event loop on a failing disk would stop every
request, and the memory is what is left to lose).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from policies.usage.journal import Journal, any_line, row_line
from policies.usage.metrics import DISK, UsageMetrics
from policies.usage.record import UsageRow

log = logging.getLogger("policies.usage.writer")


class Intake:
    def __init__(
        self,
        journal: Journal,
        metrics: UsageMetrics,
        wake: Callable[[], None],
        *,
        queue_size: int,
        batch_size: int,
        retry_seconds: float,
    ) -> None:
        self.journal = journal
        self.metrics = metrics
        self.lines: list[bytes] = []  # serialised rows not yet in the journal
        self.rejected: list[bytes] = []  # rows no database takes, for the rejected file
        self._wake = wake  # the writer's: a full batch, or rows to set aside
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._retry_seconds = retry_seconds
        self._retry: asyncio.TimerHandle | None = None
        self._disk_failing = False

    def submit(self, row: UsageRow) -> None:
        """Called on the request path: no I/O, no await."""
        try:
            line = row_line(row)
        except TypeError as exc:  # e.g. a token count beyond 64 bits from the upstream
            log.error("usage record %s cannot be serialised (%s); set aside", row.id, exc)
            self.set_aside([any_line(row)])
            return
        lines = self.lines
        if len(lines) >= self._queue_size:
            if self._retry is None:
                self.flush()  # a burst within one turn: write it now
            if len(lines) >= self._queue_size:  # the disk refuses: memory is full
                self.metrics.records["dropped"].inc()
                return
        lines.append(line)
        if len(lines) == 1 and self._retry is None:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """This turn's rows to the journal: one write, no fsync (event loop)."""
        lines = self.lines
        if not lines or self.journal.closed:
            return  # before start, or after close (which counts what is left as dropped)
        try:
            self.journal.append(b"".join(lines), len(lines))
        except OSError as exc:
            self._disk_failed(exc)
            return
        if self._disk_failing:
            log.info("usage journal %s writable again", self.journal.path)
            self._disk_failing = False
        self.metrics.records["journal"].inc(len(lines))
        lines.clear()
        if self.journal.rows >= self._batch_size:
            self._wake()

    def _disk_failed(self, exc: OSError) -> None:
        if not self._disk_failing:
            log.error(
                "usage journal %s cannot be written (%s); up to %d rows wait in memory, "
                "later ones are dropped",
                self.journal.path,
                exc,
                self._queue_size,
            )
            self._disk_failing = True
        self.metrics.retries[DISK].inc()
        if self._retry is None:
            loop = asyncio.get_running_loop()
            self._retry = loop.call_later(self._retry_seconds, self._flush_again)

    def _flush_again(self) -> None:
        self._retry = None
        self.flush()

    def stop_retrying(self) -> None:
        """No more timed flushes (at shutdown, which flushes itself)."""
        if self._retry is not None:
            self._retry.cancel()

    def set_aside(self, lines: list[bytes]) -> None:
        self.metrics.records["rejected"].inc(len(lines))
        if len(self.rejected) < self._queue_size:
            self.rejected.extend(lines)
            self._wake()
