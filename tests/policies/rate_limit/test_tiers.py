"""Rate limits by tier behind the auth policy: per key, per user, per whole tier; in-flight
counts that never leak; quotas; refill; configuration errors. On the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import ConfigError
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory, gateway_config
from tests.support.rate_limits import (
    CHAT,
    STORAGE,
    TIERS,
    auth,
    limit_policy,
    quota_used,
    static_keys,
)
from tests.support.waiting import eventually


@pytest.fixture(params=["redis", "embedded"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where the limits live: the same behaviour is expected from both."""
    return STORAGE if request.param == "redis" else {}


async def tiered(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any], **free: Any
) -> TestClient[Any, Any]:
    return await make_gateway(
        storage=storage,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys()},
            limit_policy(prefix, tiers={"free": free}),
        ],
    )


async def chat(client: TestClient[Any, Any], key: str, **extra: Any) -> Any:
    return await client.post("/v1/chat/completions", json={**CHAT, **extra}, headers=auth(key))


def in_flight(store: redis.Redis, prefix: str) -> int:
    keys = list(store.scan_iter(match=f"{prefix}:*:concurrency"))
    return sum(int(store.zcard(k)) for k in keys)


async def test_each_key_has_its_own_buckets(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, requests_per_minute=2)
    assert [(await chat(client, "alice-1")).status for _ in range(3)] == [200, 200, 429]
    assert (await chat(client, "bob-1")).status == 200


async def test_keys_of_one_user_share_the_per_user_bucket(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(
        make_gateway, prefix, storage, requests_per_minute=100, per_user={"requests_per_minute": 3}
    )
    for key in ("alice-1", "alice-2", "alice-1"):
        assert (await chat(client, key)).status == 200
    refused = await chat(client, "alice-2")
    assert refused.status == 429
    assert "for your user" in (await refused.json())["error"]["message"]
    assert (await chat(client, "bob-1")).status == 200


async def test_whole_tier_bucket_is_shared_by_every_caller(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, whole_tier={"requests_per_minute": 2})
    assert (await chat(client, "alice-1")).status == 200
    assert (await chat(client, "bob-1")).status == 200
    refused = await chat(client, "alice-2")
    assert refused.status == 429
    assert "the 'free' tier as a whole" in (await refused.json())["error"]["message"]


async def test_tier_without_limits_is_not_limited(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await make_gateway(
        storage=STORAGE,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys("premium")},
            limit_policy(prefix, tiers={"free": {"requests_per_minute": 1}}),
        ],
    )
    for _ in range(3):
        resp = await chat(client, "alice-1")
        assert resp.status == 200
        assert "x-ratelimit-limit-requests" not in resp.headers


async def test_concurrency_limit_refuses_beyond_in_flight_count(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, concurrency=2, requests_per_minute=10)
    slow = [
        asyncio.ensure_future(chat(client, "alice-1", fake={"first_byte_delay": 0.5}))
        for _ in range(2)
    ]
    await eventually(lambda: fake.in_flight == 2)
    refused = await chat(client, "alice-1")
    assert [(await s).status for s in slow] == [200, 200]
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "in flight" in error["message"]
    # A refused request is not charged: only the two admitted ones count.
    assert refused.headers["x-ratelimit-remaining-requests"] == "8"
    assert len(fake.requests) == 2


async def test_client_leaving_before_the_answer_is_charged_the_reservation(
    make_gateway: GatewayFactory, fake: FakeLlama, store: redis.Redis, prefix: str
) -> None:
    client = await tiered(make_gateway, prefix, STORAGE, concurrency=5, tokens_per_day=10_000)
    slow = {**CHAT, "fake": {"first_byte_delay": 2}}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.post("/v1/chat/completions", json=slow, headers=auth("alice-1"))
    await eventually(lambda: in_flight(store, prefix) == 0)
    # Whatever was generated before the client left is unknowable: the tier's
    # max_tokens (20) plus the prompt estimate stays charged.
    assert quota_used(store, prefix) == 20 + (len("hello there") + 16) // 4 + 1


async def test_in_flight_slots_are_released_on_every_outcome(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    client = await tiered(make_gateway, prefix, STORAGE, concurrency=10, tokens_per_minute=1_000)
    assert (await chat(client, "alice-1")).status == 200
    assert (await chat(client, "alice-1", fake={"status": 500})).status == 500
    assert (await chat(client, "alice-1", model="no-such-model")).status == 404
    stream = await chat(client, "alice-1", stream=True, fake={"error_after": 2})
    await stream.read()
    gone = await chat(client, "alice-1", stream=True, fake={"chunks": 100, "delay": 0.02})
    await gone.content.readany()
    gone.close()

    await eventually(lambda: in_flight(store, prefix) == 0)
    # All ten slots are free again.
    answers = await asyncio.gather(*(chat(client, "alice-1") for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10


async def test_tokens_reserved_are_capped_by_the_tier(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, tokens_per_minute=1_000)
    resp = await chat(client, "alice-1", max_tokens=5_000)
    assert resp.status == 200
    assert fake.requests[-1]["max_tokens"] == 20
    # The tier's cap of 20 plus a prompt estimate was reserved, not 5,000.
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) >= 1_000 - 40


async def test_daily_quota_gives_insufficient_quota(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, tokens_per_day=40)
    # Reserves up to 20 + the prompt estimate; the fake then reports 8 tokens used.
    assert (await chat(client, "alice-1")).status == 200
    await asyncio.sleep(0)
    slow = asyncio.ensure_future(chat(client, "alice-1", fake={"first_byte_delay": 0.3}))
    await eventually(lambda: fake.in_flight == 1)
    refused = await chat(client, "alice-1")
    assert (await slow).status == 200
    assert refused.status == 429
    error = (await refused.json())["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "per UTC day" in error["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert len(fake.requests) == 2


async def test_bucket_refills_at_the_configured_rate(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(make_gateway, prefix, storage, requests_per_minute=60)  # one a second
    answers = await asyncio.gather(*(chat(client, "alice-1") for _ in range(61)))
    assert sorted(a.status for a in answers).count(429) >= 1
    refused = next(a for a in answers if a.status == 429)
    await asyncio.sleep(int(refused.headers["Retry-After"]))
    assert (await chat(client, "alice-1")).status == 200
    # One request a second, not the whole bucket back: a burst finds it nearly empty (a slow
    # machine may take a second between the two calls above, hence up to two).
    burst = await asyncio.gather(*(chat(client, "alice-1") for _ in range(5)))
    assert [a.status for a in burst].count(200) <= 2


async def test_rejected_request_is_counted_by_tier_and_limit(
    make_gateway: GatewayFactory, prefix: str, storage: dict[str, Any]
) -> None:
    client = await tiered(
        make_gateway, prefix, storage, requests_per_minute=1, tokens_per_day=1_000
    )
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_gateway_rate_limited_total{limit="quota_day",tier="free"} 0.0' in metrics
    await chat(client, "alice-1")
    await chat(client, "alice-1")
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_gateway_rate_limited_total{limit="requests",tier="free"} 1.0' in metrics


def test_limits_for_an_unknown_tier_are_refused(fake_url: str) -> None:
    config = gateway_config(
        fake_url,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys()},
            limit_policy("p", tiers={"gold": {"requests_per_minute": 1}}),
        ],
    )
    with pytest.raises(ConfigError) as caught:
        create_app(config)
    assert caught.value.problems == [
        "policies[1].tiers.gold: unknown tier 'gold'; tiers are ['free', 'premium']"
    ]


def test_a_limit_must_be_positive(fake_url: str) -> None:
    config = gateway_config(fake_url, policies=[limit_policy("p", default={"concurrency": 0})])
    with pytest.raises(ConfigError) as caught:
        create_app(config)
    assert caught.value.problems == [
        "policies[0].default.concurrency: Input should be greater than 0"
    ]


def test_redis_url_must_name_redis(fake_url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        gateway_config(fake_url, storage={"redis_url": "http://127.0.0.1:6379"})
    assert caught.value.problems[0].startswith("storage.redis_url: must be a redis://")


async def test_request_running_longer_than_the_slot_expiry_keeps_its_slot(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, storage: dict[str, Any]
) -> None:
    client = await make_gateway(
        storage=storage,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys()},
            limit_policy(prefix, concurrency_ttl_seconds=1.5, tiers={"free": {"concurrency": 1}}),
        ],
    )
    # A stream whose events come slowly runs for three times the slot's expiry...
    slow = {"stream": True, "fake": {"chunks": 9, "delay": 0.5}}
    running = asyncio.ensure_future(chat(client, "alice-1", **slow))
    await eventually(lambda: fake.in_flight == 1)
    await asyncio.sleep(3)
    # ...and holds its slot all along.
    refused = await chat(client, "alice-1")
    assert refused.status == 429
    assert "in flight" in (await refused.json())["error"]["message"]
    answer = await running
    assert answer.status == 200
    assert (await answer.read()).endswith(b"data: [DONE]\n\n")
    assert (await chat(client, "alice-1")).status == 200
