"""Identical misses in flight at once make one upstream call."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from policies.cache.policy import CachePolicy
from tests.support.caches import CHAT0, cache_gateway, cache_policy, content, known_identity
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory, gateway_config
from tests.support.waiting import eventually

SLOW = {**CHAT0, "fake": {"first_byte_delay": 0.3, "unique": True}}


async def together(client: TestClient[Any, Any], body: dict[str, Any], n: int) -> list[Any]:
    async def one() -> tuple[int, str, str]:
        resp = await client.post("/v1/chat/completions", json=body)
        data = await resp.read()
        return resp.status, resp.headers["X-Cache"], content(data) if resp.status == 200 else ""

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_identical_misses_at_once_make_one_upstream_call(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    answers = await together(client, SLOW, 6)
    assert fake.calls == 1
    assert sorted(a[1] for a in answers) == ["HIT"] * 5 + ["MISS"]
    assert len({a[2] for a in answers}) == 1  # all got the one answer


async def test_a_stream_and_plain_requests_coalesce_too(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    plain, streamed = await asyncio.gather(
        together(client, SLOW, 2), together(client, {**SLOW, "stream": True}, 2)
    )
    assert fake.calls == 1
    assert len({a[2] for a in plain + streamed}) == 1


async def test_followers_go_upstream_when_the_leader_takes_too_long(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway, coalesce_wait_seconds=0.01)
    answers = await together(client, SLOW, 3)
    assert fake.calls == 3
    assert [a[1] for a in answers] == ["MISS"] * 3


async def test_followers_go_upstream_when_the_leaders_answer_is_not_stored(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    failing = {**SLOW, "fake": {**SLOW["fake"], "status": 500}}
    answers = await together(client, failing, 3)
    assert len(fake.requests) == 3
    assert [a[:2] for a in answers] == [(500, "MISS")] * 3


async def test_a_follower_whose_client_leaves_stops_waiting(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    config = gateway_config(fake_url, policies=[cache_policy(coalesce_wait_seconds=600)])
    client = await aiohttp_client(create_app(config), server_kwargs={"handler_cancellation": True})
    await known_identity(client)
    policy = client.app[STATE].runtime.chain.policies[0]
    assert isinstance(policy, CachePolicy)
    stuck = {**CHAT0, "fake": {"first_byte_delay": 600}}
    leader = asyncio.create_task(client.post("/v1/chat/completions", json=stuck))
    await eventually(lambda: fake.in_flight == 1)
    follower = asyncio.create_task(client.post("/v1/chat/completions", json=stuck))
    await eventually(lambda: policy.inflight.followers == 1)
    follower.cancel()  # its client hangs up while it waits for the leader
    await eventually(lambda: disconnects(client) == 1)  # its handler ended: it stopped waiting
    assert not leader.done()
    assert len(policy.inflight) == 1  # the leader still leads
    leader.cancel()
    await eventually(lambda: len(policy.inflight) == 0)
    assert fake.calls == 1


def disconnects(client: TestClient[Any, Any]) -> float:
    labels = {"model": "fake", "endpoint": "chat.completions"}
    value = client.app[STATE].runtime.metrics.registry.get_sample_value(
        "llama_gateway_client_disconnects_total", labels
    )
    return value or 0.0
