"""Rate limits on a Redis Cluster of the test's own: exact while the slot of a bucket moves
between nodes under traffic, and a dead node costs only the callers whose buckets it
holds their failure mode, logged once; the callers of the other nodes stay limited."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from gateway.redis_cluster import ClusterClient
from policies.rate_limit.policy import RateLimitPolicy
from tests.support.auth import sha256
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import CHAT, limit_policy, unique_prefix
from tests.support.redis_cluster import Cluster, Node
from tests.support.waiting import eventually

LOGGER = "policies.rate_limit"
LIMIT = 10  # requests per minute: the bucket gets one back every 6 s
CALLERS = [f"caller-{n}-0123456789abcdef" for n in range(9)]


def cluster_client(gateway: TestClient[Any, Any]) -> ClusterClient:
    [policy] = [p for p in gateway.app[STATE].runtime.chain.policies if p.name == "rate_limit"]
    assert isinstance(policy, RateLimitPolicy)
    assert policy.backend is not None
    client = policy.backend.client
    assert isinstance(client, ClusterClient)
    return client


async def status(gateway: TestClient[Any, Any], key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with gateway.post("/v1/chat/completions", json=CHAT, headers=headers) as resp:
        await resp.read()
        return resp.status


def keys_of(cluster: Cluster, prefix: str) -> dict[bytes, Node]:
    """Every key under `prefix`, and the node holding it."""
    found: dict[bytes, Node] = {}
    for node in cluster.nodes:
        if node.alive:
            found.update(dict.fromkeys(node.command("KEYS", f"{prefix}:*"), node))
    return found


async def test_a_slot_moving_under_traffic_keeps_the_limit_exact(
    make_gateway: GatewayFactory, own_cluster: Cluster
) -> None:
    prefix = unique_prefix()
    policy = limit_policy(prefix, default={"requests_per_minute": LIMIT}, failure_mode="closed")
    storage = {"redis_url": own_cluster.url, "redis_timeout_seconds": 2}
    replicas = [await make_gateway(storage=storage, policies=[policy]) for _ in range(2)]
    statuses: list[int] = []

    async def burst(n: int) -> None:
        statuses.extend(await asyncio.gather(*(status(replicas[i % 2]) for i in range(n))))

    started = time.monotonic()
    await burst(2)
    [(key, source)] = keys_of(own_cluster, prefix).items()  # one caller: one bucket
    target = next(n for n in own_cluster.nodes if n is not source)
    slot = own_cluster.slot(key.decode())
    steps = [
        lambda: own_cluster.begin_migration(slot, source, target),
        lambda: own_cluster.move_keys(slot, source, target),  # from now on: ASK
        lambda: own_cluster.end_migration(slot, target),  # from now on: MOVED
    ]
    for step in steps:
        await asyncio.gather(asyncio.to_thread(step), burst(2))
        await burst(2)
    await burst(6)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}, statuses  # closed: any Redis error would be a 503
    refilled = int(elapsed * LIMIT / 60)  # none unless the machine took 6 s
    assert LIMIT <= statuses.count(200) <= LIMIT + refilled
    assert keys_of(own_cluster, prefix) == {key: target}
    clients = [cluster_client(r) for r in replicas]
    assert sum(c.asked for c in clients) >= 1
    assert sum(c.moved for c in clients) >= 1


def records(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == LOGGER)


async def placed(gateway: TestClient[Any, Any], cluster: Cluster, prefix: str) -> list[Node]:
    """The node of each caller's bucket, found by the key each first request makes."""
    nodes: list[Node] = []
    for key in CALLERS:
        before = keys_of(cluster, prefix)
        assert await status(gateway, key) == 200
        [new] = set(keys_of(cluster, prefix)) - set(before)
        nodes.append(keys_of(cluster, prefix)[new])
    return nodes


@pytest.mark.parametrize(("mode", "when_down"), [("open", 200), ("closed", 503)])
async def test_a_dead_node_costs_its_own_callers_the_failure_mode_only(
    make_gateway: GatewayFactory,
    own_cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    when_down: int,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    prefix = unique_prefix()
    gateway = await make_gateway(
        storage={"redis_url": own_cluster.url, "redis_timeout_seconds": 0.5},
        tiers={"free": {}},
        policies=[
            {
                "type": "auth",
                "api_keys": False,
                "static_keys": [{"hash": sha256(k), "owner": k, "tier": "free"} for k in CALLERS],
            },
            limit_policy(prefix, tiers={"free": {"requests_per_minute": 100}}, failure_mode=mode),
        ],
    )
    nodes = await placed(gateway, own_cluster, prefix)
    victim = nodes[0]
    gone, kept = CALLERS[0], CALLERS[nodes.index(next(n for n in nodes if n is not victim))]
    victim.kill()
    for _ in range(4):  # alternating: the other node's answers must not end the outage
        assert await status(gateway, gone) == when_down
        async with gateway.post("/v1/chat/completions", json=CHAT, headers=bearer(kept)) as resp:
            assert resp.status == 200
            assert "x-ratelimit-remaining-requests" in resp.headers  # still limited
    assert records(caplog, "failed") == 1
    assert records(caplog, "answers again after") == 0
    own_cluster.restart(victim)

    async def limited_again() -> bool:
        async with gateway.post("/v1/chat/completions", json=CHAT, headers=bearer(gone)) as resp:
            return "x-ratelimit-remaining-requests" in resp.headers

    await eventually(limited_again)
    assert records(caplog, "answers again after") == 1


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
