"""Slots shared by gateway replicas: two gateways in front of one llama-server never have
more requests in flight at it than its slots, on the real Redis and on a Redis Cluster; a
dead replica's leases run out; neither replica's queue starves; without Redis each keeps
its own bound."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.support.gateways import gateway_config
from tests.support.metrics import scrape, value
from tests.support.rate_limits import SHARED_REDIS
from tests.support.redis_cluster import Cluster
from tests.support.replicas import leases_key, start_fakes
from tests.support.waiting import eventually

SLOTS = 2
DEPENDENCY_ERRORS = "llama_gateway_dependency_errors"


@pytest.fixture
async def store() -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(SHARED_REDIS)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-shared-slots-{secrets.token_hex(4)}:"


async def replica(
    aiohttp_client: Any,
    tmp_path: Path,
    url: str,
    prefix: str,
    redis_url: str = SHARED_REDIS,
    **admission: Any,
) -> TestClient[Any, Any]:
    config = gateway_config(
        url,
        models={"fake": {"upstreams": [url], "slots": SLOTS}},
        upstream={"admission": {"key_prefix": prefix, **admission}},
        storage={"data_dir": str(tmp_path), "redis_url": redis_url},
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


def chat(content: str, delay: float) -> dict[str, Any]:
    return {
        "model": "fake",
        "messages": [{"role": "user", "content": content}],
        "fake": {"first_byte_delay": delay},
    }


async def status(client: TestClient[Any, Any], content: str, delay: float) -> int:
    resp = await client.post("/v1/chat/completions", json=chat(content, delay))
    await resp.read()
    return resp.status


async def burst(clients: list[TestClient[Any, Any]], each: int, delay: float) -> list[int]:
    calls = [status(c, f"r{i}-{n}", delay) for i, c in enumerate(clients) for n in range(each)]
    return list(await asyncio.gather(*calls))


@pytest.mark.parametrize("shared", [True, False])
async def test_two_replicas_never_exceed_the_upstream_slots(
    aiohttp_client: Any,
    aiohttp_server: Any,
    tmp_path: Path,
    store: redis.Redis,
    prefix: str,
    shared: bool,
) -> None:
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    clients = [
        await replica(aiohttp_client, tmp_path / str(n), url, prefix, across_replicas=shared)
        for n in range(2)
    ]
    assert await burst(clients, 6, 0.15) == [200] * 12
    if shared:
        assert fake.max_in_flight == SLOTS
        assert await store.zcard(leases_key(prefix, url)) == 0  # every lease given back
    else:  # the test can fail: each replica alone keeps its own bound only
        assert fake.max_in_flight == 2 * SLOTS


async def test_two_replicas_on_a_redis_cluster_never_exceed_the_upstream_slots(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, shared_cluster: Cluster, prefix: str
) -> None:
    """Both keys of a lease call carry the upstream's hash tag: one node runs the script."""
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    cluster = shared_cluster.url
    clients = [
        await replica(aiohttp_client, tmp_path / str(n), url, prefix, redis_url=cluster)
        for n in range(2)
    ]
    assert await burst(clients, 6, 0.15) == [200] * 12
    assert fake.max_in_flight == SLOTS  # a failing call would have fallen back to 2 each
    key = leases_key(prefix, url)
    node = shared_cluster.owner(key)
    assert node is shared_cluster.owner(key.replace(":leases", ":waiting"))
    await eventually(lambda: node.command("ZCARD", key) == 0)  # every lease given back
    for client in clients:  # no call failed, and none fell back to the replica's own bound
        samples = await scrape(client)
        errors = [v for (name, _), v in samples.items() if name.startswith(DEPENDENCY_ERRORS)]
        assert sum(errors) == 0


async def test_leases_are_renewed_while_long_requests_run(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, store: redis.Redis, prefix: str
) -> None:
    """Requests that outlive `lease_seconds` keep their slots: the other replica still waits."""
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    clients = [
        await replica(aiohttp_client, tmp_path / str(n), url, prefix, lease_seconds=0.3)
        for n in range(2)
    ]
    assert await burst(clients, 3, 0.8) == [200] * 6
    assert fake.max_in_flight == SLOTS


async def test_a_dead_replicas_leases_run_out(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, store: redis.Redis, prefix: str
) -> None:
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    client = await replica(aiohttp_client, tmp_path, url, prefix)
    # A replica killed with both slots leased: its leases stand for 0.6 s more.
    expiry = int(time.time() * 1000) + 600
    await store.zadd(leases_key(prefix, url), {"dead:1": expiry, "dead:2": expiry})
    started = time.monotonic()
    assert await status(client, "after the dead one", 0) == 200
    assert time.monotonic() - started >= 0.4  # it waited for them to run out
    assert fake.requests[-1]["messages"][0]["content"] == "after the dead one"


async def test_neither_replicas_queue_starves_behind_the_others(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, store: redis.Redis, prefix: str
) -> None:
    """A holds every slot and has a queue of its own when B's requests come: as A's end,
    B gets its share instead of A serving its whole queue first."""
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    a, b = [await replica(aiohttp_client, tmp_path / n, url, prefix) for n in "ab"]
    first = [asyncio.create_task(status(a, f"a{n}", 0.3)) for n in range(8)]
    await asyncio.sleep(0.1)  # A's first two run, its other six wait
    second = [asyncio.create_task(status(b, f"b{n}", 0.3)) for n in range(4)]
    assert await asyncio.gather(*first, *second) == [200] * 12
    order = [body["messages"][0]["content"][0] for body in fake.requests]
    assert order[:2] == ["a", "a"]
    # Without the fair share, A's whole queue (six) would come before any of B's.
    assert order[2:8].count("b") >= 2, order
    assert fake.max_in_flight == SLOTS


async def test_without_redis_each_replica_keeps_its_own_bound(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, prefix: str
) -> None:
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    client = await replica(aiohttp_client, tmp_path, url, prefix, redis_url="redis://127.0.0.1:9")
    assert await burst([client], 6, 0.1) == [200] * 6
    assert fake.max_in_flight == SLOTS  # the local bound, while Redis is down
    metrics = await scrape(client)
    errors = value(
        metrics, "llama_gateway_dependency_errors_total", dependency="redis", action="local_bound"
    )
    assert errors >= 1


async def test_a_client_that_leaves_while_its_replica_waits_takes_no_lease(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, store: redis.Redis, prefix: str
) -> None:
    (fake,), (url,) = await start_fakes(aiohttp_server, 1)
    a, b = [await replica(aiohttp_client, tmp_path / n, url, prefix) for n in "ab"]
    running = [asyncio.create_task(status(a, f"a{n}", 0.4)) for n in range(SLOTS)]
    await asyncio.sleep(0.1)
    leaving = [asyncio.create_task(status(b, f"b{n}", 0)) for n in range(3)]
    await asyncio.sleep(0.1)
    for task in leaving:
        task.cancel()
    assert await asyncio.gather(*running) == [200] * SLOTS
    assert await status(b, "b-last", 0) == 200
    assert [r["messages"][0]["content"] for r in fake.requests] == ["a0", "a1", "b-last"]
    await asyncio.sleep(0.05)  # the last lease's ZREM goes out after its answer
    assert await store.zcard(leases_key(prefix, url)) == 0
