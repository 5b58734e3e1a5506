"""The cache on Redis: shared by replicas, TTL kept by Redis, an outage never an error."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import redis

from tests.support.caches import (
    CHAT0,
    ask,
    cache_gateway,
    sample,
    stored,
)
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import SHARED_REDIS, STORAGE, private_redis
from tests.support.waiting import eventually


async def replica(make_gateway: GatewayFactory, prefix: str, **settings: Any) -> Any:
    return await cache_gateway(
        make_gateway, sections={"storage": STORAGE}, key_prefix=prefix, **settings
    )


async def test_two_replicas_sharing_redis_share_hits(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    one, two = await replica(make_gateway, prefix), await replica(make_gateway, prefix)
    first = await ask(one, CHAT0)
    await stored(one)
    second = await ask(two, CHAT0)
    assert (first[0], second[0]) == ("MISS", "HIT")
    assert first[1] == second[1]
    assert len(fake.requests) == 1


async def test_redis_keeps_the_ttl_and_a_compressed_value(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await replica(make_gateway, prefix, default={"ttl_seconds": 30})
    big = {**CHAT0, "fake": {"chunks": 400}}
    body = (await ask(client, big))[1]
    await stored(client)
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        [key] = list(store.scan_iter(match=f"{prefix}:*"))
        assert 0 < store.pttl(key) <= 30_000
        value = store.get(key)
        assert value is not None
        assert len(value) < len(body) / 2
    finally:
        store.close()
    assert sample(client, "llama_gateway_cache_stored_bytes_total") == len(value)


async def test_an_entry_redis_expired_is_a_miss(make_gateway: GatewayFactory, prefix: str) -> None:
    client = await replica(make_gateway, prefix, default={"ttl_seconds": 0.1})
    await ask(client, CHAT0)
    await stored(client)
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        await eventually(lambda: not list(store.scan_iter(match=f"{prefix}:*")))
    finally:
        store.close()
    assert (await ask(client, CHAT0))[0] == "MISS"


async def test_a_redis_outage_is_bypassed_and_counted(
    make_gateway: GatewayFactory, fake: FakeLlama, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as server:
        storage = {"storage": {"redis_timeout_seconds": 0.5}}
        client = await cache_gateway(make_gateway, sections=storage, redis_url=server.url)
        await ask(client, CHAT0)
        await stored(client)
        assert (await ask(client, CHAT0))[0] == "HIT"
        server.stop()  # killed mid-run
        results = [(await ask(client, {**CHAT0, "seed": n}))[0] for n in range(5)]
        assert results == ["BYPASS"] * 5
        assert sample(client, "llama_gateway_cache_bypasses_total", reason="store_unavailable") == 5
        errors = {"dependency": "redis", "action": "cache_bypass"}
        assert sample(client, "llama_gateway_dependency_errors_total", **errors) == 5
        ready = await client.get("/ready")
        assert ready.status == 200  # the cache is not required
        assert (await ready.json())["checks"]["cache:redis"] is False
        server.start()

        async def back() -> bool:
            return (await ask(client, {**CHAT0, "seed": 99}))[0] != "BYPASS"

        await eventually(back)


async def test_a_redis_that_never_answers_costs_no_error(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        storage = {"storage": {"redis_timeout_seconds": 0.05}}
        client = await cache_gateway(make_gateway, sections=storage, redis_url=url)
        for n in range(3):
            assert (await ask(client, {**CHAT0, "seed": n}))[0] == "BYPASS"
        assert len(fake.requests) == 3
