"""Made-up API keys cost one query per id and can't push real keys out of the cache."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from policies.auth.keycache import KeyCache
from policies.auth.keys import ApiKey, KeyStore, SqliteKeyStore, open_store
from policies.auth.policy import AuthPolicy
from tests.support.auth import auth_settings
from tests.support.gateways import CHAT, GatewayFactory

Get = Callable[[SqliteKeyStore, str], Awaitable[ApiKey | None]]


def made_up() -> str:
    return f"sk-gw_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids the real SQLite store is asked for, in order."""
    asked: list[str] = []
    real: Get = SqliteKeyStore.get

    async def counted(store: SqliteKeyStore, key_id: str) -> ApiKey | None:
        asked.append(key_id)
        await asyncio.sleep(0)  # let concurrent requests arrive while the query runs
        return await real(store, key_id)

    monkeypatch.setattr(SqliteKeyStore, "get", counted)
    return asked


@pytest.fixture
async def gateway(auth_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await auth_gateway(auth_settings(cache_seconds=5))


@pytest.fixture
async def store(gateway: TestClient[Any, Any], tmp_path: Path) -> Any:
    opened = open_store(None, tmp_path / "gateway.db")
    await opened.start()
    yield opened
    await opened.close()


def auth_policy(gateway: TestClient[Any, Any]) -> AuthPolicy:
    chain = gateway.app[STATE].runtime.chain
    return next(p for p in chain.policies if isinstance(p, AuthPolicy))


async def test_concurrent_requests_with_one_made_up_key_share_one_query(
    gateway: TestClient[Any, Any], queries: list[str]
) -> None:
    headers = {"Authorization": f"Bearer {made_up()}"}
    replies = await asyncio.gather(
        *(gateway.post("/v1/chat/completions", json=CHAT, headers=headers) for _ in range(100))
    )
    assert [r.status for r in replies] == [401] * 100
    assert len(queries) == 1
    await gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert len(queries) == 1  # the negative answer is cached too


async def test_a_flood_of_made_up_keys_does_not_evict_a_real_one(
    gateway: TestClient[Any, Any], store: KeyStore, queries: list[str]
) -> None:
    key, record = await store.create("alice", "premium")
    policy = auth_policy(gateway)
    assert policy.keys is not None
    # On a loaded machine the flood may outlast cache_seconds: only eviction is under test.
    policy.keys._ttl = 3600
    assert (await policy._verify_key(key)).ok
    assert queries == [record.id]
    flood = [made_up() for _ in range(20_000)]
    for start in range(0, len(flood), 1000):
        verdicts = await asyncio.gather(*(policy._verify_key(k) for k in flood[start:][:1000]))
        assert not any(v.ok for v in verdicts)
    assert len(queries) == 20_001
    assert (await policy._verify_key(key)).ok
    assert len(queries) == 20_001  # served from the cache: no query


async def test_a_revoked_key_is_refused_once_its_cached_record_expires(
    auth_gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await auth_gateway(auth_settings(cache_seconds=0.2))
    store = open_store(None, tmp_path / "gateway.db")
    await store.start()
    try:
        key, record = await store.create("bob", "premium")
        headers = {"Authorization": f"Bearer {key}"}
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
        await store.revoke(record.id)
        await asyncio.sleep(0.3)  # past cache_seconds
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 401
    finally:
        await store.close()


async def test_a_wrong_secret_for_a_real_id_is_judged_on_the_cached_record(
    gateway: TestClient[Any, Any], store: KeyStore, queries: list[str]
) -> None:
    policy = auth_policy(gateway)
    key, record = await store.create("carol", "premium")
    assert not (await policy._verify_key(f"sk-gw_{record.id}_{'A' * 43}")).ok
    assert (await policy._verify_key(key)).ok
    assert queries == [record.id]  # one record serves both judgements


class Flaky:
    """A store that knows no key and fails when told to; counts its queries."""

    def __init__(self) -> None:
        self.asked = 0
        self.failing = False

    async def get(self, key_id: str) -> ApiKey | None:
        self.asked += 1
        await asyncio.sleep(0)
        if self.failing:
            raise OSError("database unreachable")
        return None


async def test_a_negative_answer_is_kept_only_for_the_cache_time() -> None:
    store = Flaky()
    cache = KeyCache(store, ttl=0.05)
    assert await cache.get("000000000000") is None
    assert await cache.get("000000000000") is None
    assert store.asked == 1
    await asyncio.sleep(0.1)
    assert await cache.get("000000000000") is None
    assert store.asked == 2


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_cached() -> None:
    store = Flaky()
    store.failing = True
    cache = KeyCache(store, ttl=5)
    results = await asyncio.gather(
        *(cache.get("0" * 12) for _ in range(10)), return_exceptions=True
    )
    assert [type(r) for r in results] == [OSError] * 10
    assert store.asked == 1
    store.failing = False
    assert await cache.get("0" * 12) is None
    assert store.asked == 2


async def test_the_unknown_id_cache_is_bounded() -> None:
    store = Flaky()
    cache = KeyCache(store, ttl=5, size=3)
    for key_id in ("a", "b", "c", "d"):
        await cache.get(key_id)
    await cache.get("a")  # pushed out by "d": asked again
    await cache.get("d")
    assert store.asked == 5
