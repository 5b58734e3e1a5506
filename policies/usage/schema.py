"""The usage table, as both stores hold it: its migrations, and what a store raises
while it cannot answer from it."""

from __future__ import annotations

from gateway.db import Migration, load_migrations


class StoreUnavailable(RuntimeError):
    """The store cannot answer (not migrated, or not connected)."""


def migrations() -> list[Migration]:
    """The usage schema; `llama-gateway db migrate` applies it, and so does the writer."""
    return load_migrations("policies.usage")
