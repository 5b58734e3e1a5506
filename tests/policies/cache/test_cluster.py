"""The cache on a Redis Cluster of the test's own: replicas share hits and semantic
entries whatever node they land on, and a dead node costs only the answers it holds
(bypassed, logged once)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.redis_cluster import ClusterClient
from policies.cache.semantic import SemanticIndex
from tests.support.caches import CHAT0, ask, cache_gateway, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.redis_cluster import Cluster, Node
from tests.support.semantic import replica as other_replica
from tests.support.semantic import semantic_env, semantic_settings, unit

LOGGER = "policies.cache"


async def replica(make_gateway: GatewayFactory, cluster: Cluster, prefix: str) -> Any:
    storage = {"storage": {"redis_url": cluster.url, "redis_timeout_seconds": 2}}
    return await cache_gateway(make_gateway, sections=storage, key_prefix=prefix)


def holders(cluster: Cluster, prefix: str) -> dict[bytes, Node]:
    found: dict[bytes, Node] = {}
    for node in cluster.nodes:
        if node.alive:
            found.update(dict.fromkeys(node.command("KEYS", f"{prefix}:*"), node))
    return found


async def test_two_replicas_on_a_cluster_share_hits(
    make_gateway: GatewayFactory, fake: FakeLlama, shared_cluster: Cluster, prefix: str
) -> None:
    one = await replica(make_gateway, shared_cluster, prefix)
    two = await replica(make_gateway, shared_cluster, prefix)
    bodies = [{**CHAT0, "seed": n} for n in range(9)]
    for n, body in enumerate(bodies):
        assert (await ask(one, body))[0] == "MISS"
        await stored(one, n + 1)
    assert [(await ask(two, body))[0] for body in bodies] == ["HIT"] * 9
    assert len(fake.requests) == 9
    assert len(set(holders(shared_cluster, prefix).values())) > 1  # spread over the nodes


async def test_a_dead_node_costs_the_cache_its_own_answers_only(
    make_gateway: GatewayFactory,
    own_cluster: Cluster,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    client = await replica(make_gateway, own_cluster, prefix)
    bodies = [{**CHAT0, "seed": n} for n in range(9)]
    nodes: list[Node] = []
    for n, body in enumerate(bodies):
        before = holders(own_cluster, prefix)
        await ask(client, body)
        await stored(client, n + 1)
        [new] = set(holders(own_cluster, prefix)) - set(before)
        nodes.append(holders(own_cluster, prefix)[new])
    victim = nodes[0]
    kept = bodies[nodes.index(next(n for n in nodes if n is not victim))]
    victim.kill()
    for _ in range(3):  # alternating: the other node's hits must not end the outage
        assert (await ask(client, bodies[0]))[0] == "BYPASS"
        assert (await ask(client, kept))[0] == "HIT"
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert sum("failed" in m for m in messages) == 1, messages
    assert not any("answers again after" in m for m in messages)


async def test_replicas_on_a_cluster_see_each_others_semantic_entries(
    shared_cluster: Cluster, prefix: str
) -> None:
    client = ClusterClient(shared_cluster.url)
    env = semantic_env(redis_url=shared_cluster.url)
    a = SemanticIndex(semantic_settings(), env, client, prefix)
    b = SemanticIndex(semantic_settings(), other_replica(env), client, prefix)
    try:
        await a.start()
        await b.start()
        for n in range(6):  # a stream per partition, on the node of its key
            await a.add(f"part{n}", unit(n), f"key-{n}")
        for n in range(6):
            assert await b.nearest(f"part{n}", unit(n)) == (f"key-{n}", pytest.approx(1.0))
        assert len(set(holders(shared_cluster, prefix).values())) > 1
    finally:
        await a.close()
        await b.close()
        await client.close()
