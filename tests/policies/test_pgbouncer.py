"""API keys and usage through PgBouncer in transaction pooling mode (`?pgbouncer=true` in
the database URL): migrations, keys created and verified, usage rows written by COPY and
reported, while every client shares PgBouncer's one server connection."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.db import open_postgres_pool
from policies.auth.keys import PostgresKeyStore
from policies.usage.store import PostgresUsageStore
from tests.support.pgbouncer import pgbouncer  # noqa: F401 (a fixture)
from tests.support.usage import NOW, row

pytestmark = pytest.mark.usefixtures("pgbouncer")


async def test_without_the_flag_prepared_statements_are_lost_between_transactions(
    pgbouncer: str,  # noqa: F811
) -> None:
    """The control: asyncpg's statement cache, as it is without `pgbouncer=true`, fails."""
    pool = await asyncpg.create_pool(pgbouncer, min_size=4, max_size=4)

    async def rounds() -> None:
        for _ in range(50):
            await asyncio.gather(*(pool.fetchval(f"SELECT {n} + $1::int", n) for n in range(8)))

    try:
        with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
            await rounds()
    finally:
        pool.terminate()


async def test_keys_work_through_pgbouncer(pgbouncer: str) -> None:  # noqa: F811
    stores = [PostgresKeyStore(f"{pgbouncer}?pgbouncer=true") for _ in range(2)]
    for store in stores:
        await store.start()
    try:
        plaintext, key = await stores[0].create("alice", "free")
        for _ in range(3):  # both stores' connections, on one server connection
            results = await asyncio.gather(*(s.verify(plaintext) for s in stores))
            assert all(v.key is not None and v.key.id == key.id for v in results)
        assert await stores[1].revoke(key.id)
        assert all([not (await s.verify(plaintext)).ok for s in stores])
    finally:
        for store in stores:
            await store.close()


async def test_usage_rows_go_in_by_copy_and_report_through_pgbouncer(
    pgbouncer: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = f"{pgbouncer}?pgbouncer=true"
    stores = [PostgresUsageStore(url) for _ in range(2)]
    for store in stores:
        await store.connect()
    try:
        assert all(s.staging for s in stores)
        batches = [[row(n) for n in range(i * 50, i * 50 + 50)] for i in range(4)]
        written = await asyncio.gather(*(stores[i % 2].insert(b) for i, b in enumerate(batches)))
        assert written == [50] * 4
        assert await stores[0].insert(batches[0]) == 0  # a replay adds nothing
        assert all(s.staging for s in stores)  # COPY held: the temporary table worked
        _, total = await stores[1].report(NOW - timedelta(hours=1), NOW, None)
        assert total.requests == 200
        assert total.prompt_tokens == 200 * 10
    finally:
        for store in stores:
            await store.close()


async def test_a_bad_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="pgbouncer="):
        await open_postgres_pool("postgresql://postgres@127.0.0.1/test?pgbouncer=yes")
