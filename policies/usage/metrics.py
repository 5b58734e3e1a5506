"""The usage policy's metrics: where records went, what waits, and failed writes."""

from __future__ import annotations

from collections.abc import Callable

from gateway.metrics import Metrics
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore

DESTINATIONS = ("database", "journal", "replayed", "rejected", "dropped")
DISK = "disk"  # the journal's
DEPENDENCIES = (PostgresUsageStore.dependency, SqliteUsageStore.dependency, DISK)
# Whatever fails, the rows wait (in the journal, or in memory) for the writer's next try.
RETRY = "retry"


class UsageMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.registry = metrics.registry  # where the samples are read
        self._metrics = metrics
        self.queue_depth = metrics.gauge(
            "usage_queue_depth",
            "Usage records in memory, not yet in the journal (only while the journal's disk "
            "refuses writes).",
        )
        self.journal_bytes = metrics.gauge(
            "usage_journal_bytes",
            "Bytes of the local usage journal the database has not committed yet.",
        )
        records = metrics.counter(
            "usage_records",
            "Usage records by where they went (journal: every record as its request completes; "
            "database: inserted; replayed: left by an earlier run; rejected: refused by the "
            "database for good or not serialisable, set aside; dropped: the journal's disk "
            "refused it and memory was full).",
            ("destination",),
        )
        self.records = {destination: records.labels(destination) for destination in DESTINATIONS}
        self.writer_restarts = metrics.counter(
            "usage_writer_restarts",
            "Times the usage writer failed unexpectedly (a bug) and was restarted; records wait "
            "in the journal meanwhile.",
        )
        errors = metrics.dependency_errors
        self.retries = {dependency: errors.labels(dependency, RETRY) for dependency in DEPENDENCIES}

    def follow(self, queue_depth: Callable[[], int], journal_bytes: Callable[[], int]) -> None:
        """The gauges' values, read from the writer (in each worker, with several)."""
        self._metrics.track(self.queue_depth, queue_depth)
        self._metrics.track(self.journal_bytes, journal_bytes)
