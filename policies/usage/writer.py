"""The background writer: the request path only enqueues; batches go to the database or,
when it fails or falls behind, to the local journal, which is replayed once it is back.

Two tasks share the work:
- intake takes rows from the bounded in-memory queue in batches (`batch_size` rows or
  every `flush_seconds`) and inserts them while the database is healthy; otherwise, or
  when an insert fails, the batch is appended to the journal (fsynced). Rows that arrive
  while the queue is full go straight to the journal too.
- the replayer connects (and migrates), then drains the journal into the database in
  file order; on failure it retries with exponential backoff and jitter (tenacity).
  The database counts as healthy again only once the journal is empty.

Closing (SIGTERM) drains the queue into the database, or into the journal if the
database is down, within `shutdown_seconds`; nothing in memory is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from gateway.metrics import Metrics
from policies.usage.journal import Journal, append_rejected
from policies.usage.record import UsageRow
from policies.usage.store import UsageStore, is_permanent

log = logging.getLogger("policies.usage.writer")


@dataclass(frozen=True)
class WriterOptions:
    batch_size: int = 500
    flush_seconds: float = 1.0
    queue_size: int = 20_000
    write_timeout_seconds: float = 5.0
    shutdown_seconds: float = 10.0
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0


class UsageWriter:
    def __init__(
        self, store: UsageStore, journal: Journal, metrics: Metrics, options: WriterOptions
    ) -> None:
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.options = options
        self.healthy = False  # inserts go straight to the database
        self._queue: deque[UsageRow] = deque()
        self._spill: list[UsageRow] = []  # arrived while the queue was full: to the journal
        self._in_hand: list[UsageRow] = []  # taken from the queue, not yet stored anywhere
        self._wake = asyncio.Event()
        self._replay = asyncio.Event()
        self._lock = asyncio.Lock()  # the journal: one operation at a time
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = wait_exponential_jitter(
            multiplier=options.retry_initial_seconds,
            max=options.retry_max_seconds,
            jitter=options.retry_initial_seconds,
        )
        metrics.usage_queue_depth.set_function(self.queued)
        metrics.usage_journal_bytes.set_function(lambda: journal.pending_bytes)

    def queued(self) -> int:
        return len(self._queue) + len(self._spill) + len(self._in_hand)

    def submit(self, row: UsageRow) -> None:
        """Called on the request path: no I/O, no await."""
        queue = self._queue
        if len(queue) < self.options.queue_size:
            queue.append(row)
            if len(queue) >= self.options.batch_size:
                self._wake.set()
        else:
            self._spill.append(row)
            self._wake.set()

    async def start(self) -> None:
        await asyncio.to_thread(self.journal.open)
        self._replay.set()  # connect, migrate, and replay what an earlier run left
        self._tasks = [
            asyncio.create_task(self._intake(), name="usage-intake"),
            asyncio.create_task(self._replayer(), name="usage-replay"),
        ]

    async def _intake(self) -> None:
        batch_size = self.options.batch_size
        while True:
            if self._stopping and not self._queue and not self._spill:
                return
            if len(self._queue) < batch_size and not self._spill and not self._stopping:
                # A full batch (or a spill) wakes us; a partial one waits at most this long.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.flush_seconds):
                        await self._wake.wait()
            self._wake.clear()
            await self._journal_spill()
            while self._queue:  # everything queued now, in batches
                size = min(batch_size, len(self._queue))
                self._in_hand = [self._queue.popleft() for _ in range(size)]
                await self._store(self._in_hand)
                self._in_hand = []
                await self._journal_spill()

    async def _journal_spill(self) -> None:
        if self._spill:
            self._in_hand, self._spill = self._spill, []
            await self._to_journal(self._in_hand)
            self._in_hand = []

    async def _store(self, batch: list[UsageRow]) -> None:
        if self.healthy:
            try:
                async with asyncio.timeout(self.options.write_timeout_seconds):
                    await self.store.insert(batch)
            except Exception as exc:
                self._failed(exc, "journal")
            else:
                self.metrics.usage_records.labels("database").inc(len(batch))
                return
        await self._to_journal(batch)

    def _failed(self, exc: BaseException, action: str) -> None:
        if self.healthy:
            log.warning(
                "usage database failed (%s: %s); usage goes to the journal until it is back",
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, self.store.errors),
                extra={"journal": str(self.journal.path)},
            )
        self.healthy = False
        self.metrics.dependency_errors.labels(self.store.dependency, action).inc()

    async def _to_journal(self, rows: list[UsageRow]) -> None:
        try:
            async with self._lock:
                await asyncio.to_thread(self.journal.append, rows)
        except OSError:
            log.exception("usage journal %s cannot be written", self.journal.path)
            self.metrics.dependency_errors.labels("disk", "retry").inc()
            self._keep(rows)
            await asyncio.sleep(self.options.flush_seconds)
            return
        self.metrics.usage_records.labels("journal").inc(len(rows))
        self._replay.set()

    def _keep(self, rows: list[UsageRow]) -> None:
        """Neither database nor disk takes rows: hold them in memory, up to twice the
        queue's size; beyond that they are dropped, counted and logged."""
        room = max(0, 2 * self.options.queue_size - len(self._queue))
        self._queue.extendleft(reversed(rows[:room]))
        if len(rows) > room:
            self.metrics.usage_records.labels("dropped").inc(len(rows) - room)
            log.error("usage: %d records dropped: no database, no journal", len(rows) - room)

    async def _replayer(self) -> None:
        while True:
            await self._replay.wait()
            self._replay.clear()
            async for attempt in AsyncRetrying(
                wait=self._backoff,
                retry=retry_if_exception_type(Exception),
                before_sleep=self._retrying,
            ):
                with attempt:
                    await self._replay_all()

    def _retrying(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.metrics.dependency_errors.labels(self.store.dependency, "retry").inc()
        log.warning(
            "usage database unavailable (%s: %s); retry %d in %.1f s, journal holds %d bytes",
            type(exc).__name__,
            exc,
            state.attempt_number,
            state.upcoming_sleep,
            self.journal.pending_bytes,
            exc_info=exc is not None and not isinstance(exc, self.store.errors),
        )

    async def _replay_all(self) -> None:
        """Connect, then move the journal into the database, oldest rows first."""
        async with asyncio.timeout(self.options.write_timeout_seconds):
            await self.store.connect()
        while True:
            async with self._lock:
                rows, end = await asyncio.to_thread(self.journal.read, self.options.batch_size)
                if end == self.journal.offset:  # nothing left
                    if not self.healthy:
                        log.info("usage database reachable; writing usage directly again")
                    self.healthy = True
                    return
            await self._insert_replayed(rows)
            async with self._lock:
                await asyncio.to_thread(self.journal.commit, end)
            self.metrics.usage_records.labels("replayed").inc(len(rows))

    async def _insert_replayed(self, rows: list[UsageRow]) -> None:
        try:
            async with asyncio.timeout(self.options.write_timeout_seconds):
                await self.store.insert(rows)
        except Exception as exc:
            if not is_permanent(exc, self.store):
                self.healthy = False  # the rows stay in the journal; the retry logs why
                raise
            # Some row can never be stored (it would block the journal forever): store the
            # others one by one and set the refused ones aside for an admin to look at.
            await self._insert_one_by_one(rows)

    async def _insert_one_by_one(self, rows: list[UsageRow]) -> None:
        refused = []
        for row in rows:
            try:
                async with asyncio.timeout(self.options.write_timeout_seconds):
                    await self.store.insert([row])
            except Exception as exc:
                if not is_permanent(exc, self.store):
                    raise
                log.error("usage record %s refused by the database: %s", row.id, exc)
                refused.append(row)
        if refused:
            await asyncio.to_thread(append_rejected, self.journal.directory, refused)
            self.metrics.usage_records.labels("rejected").inc(len(refused))

    async def close(self) -> None:
        """Flush within `shutdown_seconds`: queue -> database, or -> journal."""
        self._stopping = True
        self._wake.set()
        intake, replayer = self._tasks if self._tasks else (None, None)
        try:
            await _stop(replayer)
            async with asyncio.timeout(self.options.shutdown_seconds):
                if intake is not None:
                    await asyncio.shield(intake)
                if self.journal.pending_bytes:
                    await self._replay_all()
        except TimeoutError:
            log.warning(
                "usage flush took longer than %g s; the rest stays in the journal %s",
                self.options.shutdown_seconds,
                self.journal.path,
            )
        except Exception as exc:
            log.warning(
                "usage database unavailable at shutdown (%s: %s); the journal %s keeps %d "
                "bytes for the next start",
                type(exc).__name__,
                exc,
                self.journal.path,
                self.journal.pending_bytes,
                exc_info=not isinstance(exc, self.store.errors),
            )
        finally:
            await _stop(intake)
            left = [*self._in_hand, *self._spill, *self._queue]
            self._in_hand, self._spill = [], []
            self._queue.clear()
            await self._last_words(left)

    async def _last_words(self, rows: list[UsageRow]) -> None:
        try:
            if rows:
                await asyncio.to_thread(self.journal.append, rows)
                self.metrics.usage_records.labels("journal").inc(len(rows))
                log.info("usage: %d records journaled at shutdown", len(rows))
        finally:
            self.journal.close()
            await self.store.close()


async def _stop(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    if task.done():
        if not task.cancelled() and task.exception() is not None:
            log.error("usage task %s had failed", task.get_name(), exc_info=task.exception())
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
