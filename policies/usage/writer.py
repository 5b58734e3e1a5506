"""The background writer: each row goes to the local journal as its request completes
(`policies/usage/intake.py`), and from the journal to the database in batches.

One task moves the journal into the database in batches (`policies/usage/batches.py`),
woken by a full batch or every `flush_seconds`; it fsyncs the journal every
`flush_seconds`. While the database fails it retries with exponential backoff and jitter
(tenacity). The task is supervised: an unexpected error is logged, counted and the task
restarted after a backoff.

Closing (SIGTERM) asks the task to stop where it waits (for rows, or to retry) or
between two batches, and cancels it only if it has not within `write_timeout_seconds`
(a statement that hangs): a task cancelled in the middle of a statement or of a thread's
work leaves that running. Then it writes what is in memory to the journal and drains the
journal into the database within `shutdown_seconds`; what the database does not take
stays in the journal for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.wait import wait_exponential_jitter

from policies.usage.batches import Batches
from policies.usage.intake import Intake
from policies.usage.journal import Journal, append_rejected
from policies.usage.metrics import UsageMetrics
from policies.usage.record import UsageRow
from policies.usage.store import UsageStore, is_permanent

log = logging.getLogger("policies.usage.writer")


class _Stopped(Exception):
    """close() asked the writer to stop while it waited to retry."""


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
        self, store: UsageStore, journal: Journal, metrics: UsageMetrics, options: WriterOptions
    ) -> None:
        self.store = store
        self.journal = journal
        self.metrics = metrics
        self.options = options
        self.healthy = False  # the database took the last batch
        self.restarts = 0  # times the writer's task failed unexpectedly
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()  # close() asks the writer's task to stop
        self.intake = Intake(
            journal,
            metrics,
            self._wake.set,
            queue_size=options.queue_size,
            batch_size=options.batch_size,
            retry_seconds=options.flush_seconds,
        )
        self.batches = Batches(
            store,
            journal,
            self.intake,
            metrics,
            batch_size=options.batch_size,
            write_timeout_seconds=options.write_timeout_seconds,
        )
        self._synced_at = 0.0  # event-loop time of the last fsync
        self._task: asyncio.Task[None] | None = None
        self._backoff = wait_exponential_jitter(
            multiplier=options.retry_initial_seconds,
            max=options.retry_max_seconds,
            jitter=options.retry_initial_seconds,
        )
        metrics.follow(lambda: len(self.intake.lines), lambda: journal.pending_bytes)

    def queued(self) -> int:
        """Rows not yet in the database: in memory or in the journal."""
        return len(self.intake.lines) + self.journal.rows

    def submit(self, row: UsageRow) -> None:
        """Called on the request path: no I/O, no await."""
        self.intake.submit(row)

    async def start(self) -> None:
        await asyncio.to_thread(self.journal.open)
        self._task = asyncio.create_task(self._supervise(), name="usage-writer")

    async def _supervise(self) -> None:
        """Run the writer; whatever kills it (a bug) is logged, counted, and the writer
        restarted after a backoff: rows keep arriving in the journal meanwhile."""
        failures = 0
        while True:
            try:
                await self._run()
                return  # asked to stop
            except Exception:
                failures += 1
                self.restarts += 1
                self.metrics.writer_restarts.inc()
                log.exception("the usage writer failed; restarting it (failure %d)", failures)
                if await self._rest(self._pause(failures)):
                    return

    def _pause(self, failures: int) -> float:
        initial = self.options.retry_initial_seconds
        return float(min(self.options.retry_max_seconds, initial * 2 ** min(failures, 32)))

    async def _rest(self, seconds: float) -> bool:
        """Wait `seconds`, or less if close() asks the writer to stop: whether it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _run(self) -> None:
        """Until close() asks: wait for rows, then drain them, retrying while the database
        fails. Returns at a wait; close() drains what is left."""
        first = True  # connect (and migrate) and replay what an earlier run left, at once
        while True:
            waiting = self.journal.rows < self.options.batch_size and not self.intake.rejected
            if not first and waiting:
                # A full batch wakes the writer; a partial one waits at most this long.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.flush_seconds):
                        await self._wake.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            await self._sync()
            try:
                async for attempt in AsyncRetrying(
                    wait=self._backoff,
                    retry=retry_if_exception(lambda exc: not is_permanent(exc, self.store)),
                    before_sleep=self._retrying,
                    sleep=self._sleep_syncing,
                ):
                    with attempt:
                        await self._drain()
            except _Stopped:
                return
            first = False

    async def _sync(self, *, now: bool = False) -> None:
        """The rows set aside to their file; the journal fsynced once per `flush_seconds`
        (not per batch: a busy gateway would pay an fsync every few hundred rows)."""
        if self.intake.rejected:
            lines, self.intake.rejected = self.intake.rejected, []
            await asyncio.to_thread(append_rejected, self.journal.directory, lines)
        clock = asyncio.get_running_loop().time()
        if now or clock >= self._synced_at + self.options.flush_seconds:
            self._synced_at = clock
            await asyncio.to_thread(self.journal.sync)

    async def _sleep_syncing(self, seconds: float) -> None:
        """Wait between retries, still fsyncing the journal every `flush_seconds`; close()
        ends the wait, and the retries."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            if await self._rest(min(left, self.options.flush_seconds)):
                raise _Stopped
            await self._sync()

    def _retrying(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if self.healthy or state.attempt_number == 1:
            log.warning(
                "usage database unavailable (%s: %s); rows wait in the journal %s",
                type(exc).__name__,
                exc,
                self.journal.path,
                exc_info=exc is not None and not isinstance(exc, self.store.errors),
            )
        self.healthy = False
        self.metrics.retries[self.store.dependency].inc()

    async def _drain(self, *, final: bool = False) -> None:
        """Connect, then move the journal into the database, oldest rows first, up to
        what it held when called. The writer's task stops between batches once close()
        asks, and compacts the journal; close()'s own drain (`final`) does neither."""
        async with asyncio.timeout(self.options.write_timeout_seconds):
            await self.store.connect()
        stop = (lambda: False) if final else self._stopping.is_set
        await self.batches.move(self.journal.rows, stop)
        if not self.healthy:
            log.info("usage database reachable; rows go in as they come")
            self.healthy = True
        if not final and not self._stopping.is_set() and self.journal.worth_compacting():
            await self.batches.compact()

    async def close(self) -> None:
        """The writer's task stopped, then memory -> journal, then journal -> database
        within `shutdown_seconds`."""
        await self._stop()
        self.intake.stop_retrying()
        self.intake.flush()
        try:
            async with asyncio.timeout(self.options.shutdown_seconds):
                # No compaction: one a cancelled task began may still be copying in its
                # thread, into the same file.
                await self._drain(final=True)
        except TimeoutError:
            log.warning(
                "usage flush took longer than %g s; the rest stays in the journal %s",
                self.options.shutdown_seconds,
                self.journal.path,
            )
        except Exception as exc:
            log.warning(
                "usage database unavailable at shutdown (%s: %s); the journal %s keeps %d "
                "rows for the next start",
                type(exc).__name__,
                exc,
                self.journal.path,
                self.journal.rows,
                exc_info=not isinstance(exc, self.store.errors),
            )
        finally:
            await self._last_words()

    async def _last_words(self) -> None:
        try:
            self.intake.flush()  # rows of requests that completed during the drain
            if lines := self.intake.lines:
                self.metrics.records["dropped"].inc(len(lines))
                log.error("usage: %d records dropped at shutdown: no journal", len(lines))
            await self._sync(now=True)
        finally:
            self.journal.close()
            await self.store.close()

    async def _stop(self) -> None:
        """Ask the writer's task to stop at its next wait, and cancel it if it has not
        within `write_timeout_seconds`, the longest one statement of it may take."""
        self._stopping.set()
        self._wake.set()
        task = self._task
        if task is None:
            return
        patience = min(self.options.write_timeout_seconds, self.options.shutdown_seconds)
        done, _ = await asyncio.wait({task}, timeout=patience)
        if not done:
            log.warning("the usage writer did not stop within %g s; cancelling it", patience)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
