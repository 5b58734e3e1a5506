"""The key store's schema, on both databases: each migration applied once, all of it or
none, by concurrent starts too, and never another one under a version in use."""

from __future__ import annotations

import asyncio

import pytest

from gateway.db import Migration, MigrationError
from policies.auth.keys import migrations
from tests.support.key_stores import Stores


async def test_starting_again_applies_no_migration_twice(stores: Stores) -> None:
    first = await stores.started()
    plaintext, _ = await first.create("alice", "free", None)
    await first.close()
    second = await stores.started()
    assert (await second.verify(plaintext)).ok
    assert await stores.migrate(migrations()) == []
    assert await stores.query("SELECT version, name FROM schema_migrations") == [(1, "api_keys")]


async def test_concurrent_starts_do_not_fail(stores: Stores) -> None:
    started = [stores.new() for _ in range(4)]
    # return_exceptions: every start finishes (and its store gets closed) even if one fails.
    results = await asyncio.gather(*(store.start() for store in started), return_exceptions=True)
    assert results == [None] * 4
    assert await stores.query("SELECT version, name FROM schema_migrations") == [(1, "api_keys")]
    plaintext, _ = await started[0].create("alice", "free", None)
    assert all([(await store.verify(plaintext)).ok for store in started])


async def test_failed_migration_leaves_nothing_behind(stores: Stores) -> None:
    await stores.migrate(migrations())
    broken = Migration(900, "broken", "CREATE TABLE half_done (x integer);\nCREATE TABLE (;\n")
    with pytest.raises(Exception, match="syntax"):
        await stores.migrate([broken])
    assert await stores.query("SELECT version FROM schema_migrations") == [(1,)]
    with pytest.raises(Exception, match="half_done"):
        await stores.query("SELECT * FROM half_done")


async def test_a_different_migration_under_a_used_version_is_an_error(stores: Stores) -> None:
    await stores.migrate(migrations())
    with pytest.raises(MigrationError, match="unused version"):
        await stores.migrate([Migration(1, "usage", "SELECT 1")])


def test_migration_file_is_found() -> None:
    assert [(m.version, m.name) for m in migrations()] == [(1, "api_keys")]
    assert "CREATE TABLE api_keys" in migrations()[0].sql
