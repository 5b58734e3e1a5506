"""In-flight slots are freed whatever happens to the admission call: a client that hangs
up while it runs, an answer from Redis that comes too late (Redis through a proxy of the
test's own that can hold its replies; keys under a unique prefix on the shared Redis)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import CHAT, ReplyGate, limit_policy
from tests.support.waiting import eventually


def in_flight(store: redis.Redis, prefix: str) -> int:
    return sum(int(store.zcard(k)) for k in store.scan_iter(match=f"{prefix}:*:concurrency"))


async def test_client_hanging_up_during_admission_frees_its_slot(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    async with ReplyGate() as gate:
        storage = {"redis_url": gate.url, "redis_timeout_seconds": 10}
        policy = limit_policy(prefix, default={"concurrency": 2})
        client = await make_gateway(storage=storage, policies=[policy])
        gate.open.clear()  # the admission runs; its caller waits for the answer
        request = asyncio.ensure_future(client.post("/v1/chat/completions", json=CHAT))
        await eventually(lambda: in_flight(store, prefix) == 1)
        request.cancel()  # the client hangs up
        await asyncio.gather(request, return_exceptions=True)
        gate.open.set()
        await eventually(lambda: in_flight(store, prefix) == 0)


async def test_admission_answered_too_late_frees_its_slot(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    store: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Calls are not held back after a failure: this test is about the slot, not probing.
    monkeypatch.setattr("gateway.redis_scripts.PROBE_SECONDS", 0.0)
    async with ReplyGate() as gate:
        storage = {"redis_url": gate.url, "redis_timeout_seconds": 0.2}
        policy = limit_policy(prefix, default={"concurrency": 2}, failure_mode="open")
        client = await make_gateway(storage=storage, policies=[policy])
        gate.open.clear()
        slow = {**CHAT, "fake": {"first_byte_delay": 0.3}}
        request = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
        await eventually(lambda: fake.in_flight == 1)  # no answer in time: let through
        assert in_flight(store, prefix) == 1  # yet the admission ran
        gate.open.set()
        resp = await request
        assert resp.status == 200
        assert "x-ratelimit-remaining-requests" not in resp.headers
        await eventually(lambda: in_flight(store, prefix) == 0)
