"""From the journal into the database, one batch at a time.

A batch is read from the front of the journal, inserted, and the journal's front
committed once the database has the rows. A batch the database refuses for good is split
in halves until the refused rows are alone; those are set aside in
`usage-rejected.jsonl` and counted: one bad row keeps no good one out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from policies.usage.intake import Intake
from policies.usage.journal import Journal, any_line
from policies.usage.metrics import UsageMetrics
from policies.usage.record import UsageRow
from policies.usage.store import UsageStore, is_permanent

log = logging.getLogger("policies.usage.writer")


class Batches:
    def __init__(
        self,
        store: UsageStore,
        journal: Journal,
        intake: Intake,
        metrics: UsageMetrics,
        *,
        batch_size: int,
        write_timeout_seconds: float,
    ) -> None:
        self.store = store
        self.journal = journal
        self.intake = intake  # where the rows no database takes are set aside
        self.metrics = metrics
        self.batch_size = batch_size
        self.write_timeout_seconds = write_timeout_seconds

    async def move(self, rows: int, stop: Callable[[], bool]) -> None:
        """Up to `rows` rows, oldest first, unless `stop()` says otherwise between batches."""
        left = rows  # a count, not an offset: the file starts over once emptied
        while left > 0 and not stop():
            moved = await self._move(min(left, self.batch_size))
            if not moved:
                break
            left -= moved

    async def _move(self, take: int) -> int:
        """One batch from the front of the journal into the database; the lines read."""
        journal = self.journal
        # Rows an earlier run left count as replayed, the others as written.
        destination = "replayed" if journal.earlier else "database"
        rows, bad, after = await asyncio.to_thread(journal.read, take, journal.size)
        if not rows and not bad:
            return 0  # cannot happen unless the file was edited under the gateway
        if bad:
            log.error("usage journal %s: %d unreadable lines set aside", journal.path, len(bad))
            self.intake.set_aside(bad)
        await self._insert(rows)
        journal.commit(after, len(rows) + len(bad))
        self.metrics.records[destination].inc(len(rows))
        return len(rows) + len(bad)

    async def _insert(self, rows: list[UsageRow]) -> None:
        """Insert a batch; one the database refuses for good is halved until the rows it
        refuses are alone, and those are set aside."""
        if not rows:
            return
        try:
            async with asyncio.timeout(self.write_timeout_seconds):
                await self.store.insert(rows)
        except Exception as exc:
            if not is_permanent(exc, self.store):
                raise  # the rows stay in the journal; the retry logs why
            if len(rows) == 1:
                log.error("usage record %s refused by the database: %s", rows[0].id, exc)
                self.intake.set_aside([any_line(rows[0])])
                return
            half = len(rows) // 2
            await self._insert(rows[:half])
            await self._insert(rows[half:])

    async def compact(self) -> None:
        """What the database has, cut off the journal's front (see `Journal.copy_tail`)."""
        end = self.journal.size
        try:
            tmp = await asyncio.to_thread(self.journal.copy_tail, end)
            self.journal.swap(tmp, end)
        except OSError as exc:
            log.warning("usage journal %s: compaction failed (%s); later", self.journal.path, exc)
