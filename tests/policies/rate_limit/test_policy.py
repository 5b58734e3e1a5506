"""The rate-limit policy through the gateway, on the real Redis (a unique key prefix per test)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import CHAT, STORAGE, limit_policy, quota_used
from tests.support.waiting import eventually


async def limited(make_gateway: GatewayFactory, prefix: str, **default: Any) -> Any:
    """A gateway whose callers (no auth: keyed by client address) get `default` limits."""
    return await make_gateway(storage=STORAGE, policies=[limit_policy(prefix, default=default)])


async def test_answer_carries_openai_rate_limit_headers(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=10, tokens_per_minute=10_000)
    first = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50})
    second = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50})
    assert first.status == second.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert first.headers["x-ratelimit-reset-requests"] == "6s"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    # The prompt estimate plus max_tokens is reserved at admission.
    assert 9_930 <= int(first.headers["x-ratelimit-remaining-tokens"]) <= 9_950
    assert first.headers["x-ratelimit-reset-tokens"].endswith("ms")


async def test_stream_head_carries_rate_limit_headers(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=5, tokens_per_minute=9_000)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["x-ratelimit-remaining-requests"] == "4"
    assert "x-ratelimit-remaining-tokens" in resp.headers
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_over_the_request_limit_gives_429_without_calling_upstream(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=2)
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 429
    error = (await resp.json())["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "requests"
    assert "2 per minute" in error["message"]
    assert resp.headers["Retry-After"] == "30"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake.requests) == 2


async def test_exactly_the_limit_passes_under_concurrency(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=50)
    answers = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=CHAT) for _ in range(200))
    )
    statuses = [a.status for a in answers]
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150
    assert len(fake.requests) == 50


async def test_request_reserving_more_tokens_than_left_is_refused(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_minute=1_000)
    slow = {**CHAT, "max_tokens": 600, "fake": {"first_byte_delay": 0.5}}
    first = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
    await eventually(lambda: fake.in_flight == 1)  # admitted: its reservation is held
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 600})
    assert (await first).status == 200
    assert resp.status == 429
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert "lower max_tokens" in error["message"]


async def test_reservation_is_reconciled_with_real_usage(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_day=100_000)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 500})
    assert resp.status == 200
    usage = (await resp.json())["usage"]
    await settled(store, prefix, below=500)
    assert quota_used(store, prefix) == usage["total_tokens"]


async def test_stream_is_reconciled_with_its_usage_event(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_day=100_000)
    body = {**CHAT, "stream": True, "max_tokens": 500, "fake": {"chunks": 7}}
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.read()
    await settled(store, prefix, below=500)
    assert quota_used(store, prefix) == 5 + 7  # the fake's prompt and completion tokens


async def test_disconnected_stream_is_charged_what_was_sent(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_day=100_000)
    body = {**CHAT, "stream": True, "max_tokens": 500, "fake": {"chunks": 50, "delay": 0.02}}
    resp = await client.post("/v1/chat/completions", json=body)
    seen = 0
    async for _ in resp.content.iter_any():
        seen += 1
        if seen >= 3:
            break
    resp.close()
    await settled(store, prefix, below=500)
    used = quota_used(store, prefix)
    prompt_estimate = (len("hello there") + 16) // 4 + 1
    # The prompt estimate plus the events sent before the client left: far below the 500
    # reserved, and nothing like the 50 tokens a full answer would have cost.
    assert prompt_estimate < used < prompt_estimate + 40


async def settled(store: redis.Redis, prefix: str, below: int) -> None:
    """Wait until completion has given back (most of) the reservation."""
    await eventually(lambda: quota_used(store, prefix) < below)


async def test_upstream_error_answer_carries_rate_limit_headers(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=5)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 500}})
    assert resp.status == 500
    assert resp.headers["x-ratelimit-remaining-requests"] == "4"


async def test_model_listing_costs_a_request_and_no_tokens(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, requests_per_minute=5, tokens_per_minute=100)
    resp = await client.get("/v1/models")
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-requests"] == "4"
    assert "x-ratelimit-remaining-tokens" not in resp.headers


async def test_embeddings_reserve_only_the_prompt(
    make_gateway: GatewayFactory, store: redis.Redis, prefix: str
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_minute=10_000, tokens_per_day=10_000)
    resp = await client.post("/v1/embeddings", json={"model": "fake", "input": "x" * 400})
    assert resp.status == 200
    # 400 characters: about 100 tokens reserved, where a chat would add max_tokens.
    assert 9_895 <= int(resp.headers["x-ratelimit-remaining-tokens"]) <= 9_900
    await eventually(lambda: quota_used(store, prefix) == 4)  # then the fake's real usage


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/chat/completions", b'{"model":"fake","messages":[{"role":"user","content":%s}]}'),
        ("/v1/completions", b'{"model":"fake","prompt":%s}'),
        ("/v1/embeddings", b'{"model":"fake","input":%s}'),
    ],
)
async def test_deeply_nested_prompt_is_estimated_without_an_error(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, path: str, template: bytes
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_minute=10_000)
    body = template % (b"[" * 1_000 + b'"hi"' + b"]" * 1_000)
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert len(fake.requests) == 1


def redis_day_end(store: redis.Redis) -> int:
    seconds, _ = store.time()
    return (seconds // 86_400 + 1) * 86_400_000


@pytest.mark.parametrize("skew_days", [1, -1, 45])
async def test_quota_window_follows_redis_time_not_the_gateway_clock(
    make_gateway: GatewayFactory,
    store: redis.Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    skew_days: int,
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_day=5_000, tokens_per_month=9_000)
    day_end = redis_day_end(store)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await eventually(lambda: quota_used(store, prefix) == 8)  # the fake's usage
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_days * 86_400)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await eventually(lambda: quota_used(store, prefix) == 16)
    if redis_day_end(store) != day_end:
        pytest.skip("the UTC day ended during the test")
    # Both requests were charged to the day and month Redis is in, whatever the
    # gateway's clock said.
    assert quota_used(store, prefix, "quota_month") == 16
    (key,) = store.scan_iter(match=f"{prefix}:*:quota_day")
    assert int(store.hget(key, "e") or 0) == day_end


@pytest.mark.parametrize(("quota", "skew_days"), [("tokens_per_day", 1), ("tokens_per_month", 45)])
async def test_quota_used_up_stays_used_up_when_the_gateway_clock_jumps(
    make_gateway: GatewayFactory,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    quota: str,
    skew_days: int,
) -> None:
    client = await limited(make_gateway, prefix, **{quota: 20})
    ask = {**CHAT, "max_tokens": 1}  # reserves 8 tokens, the fake's usage: also 8
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=ask)).status == 200
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_days * 86_400)
    resp = await client.post("/v1/chat/completions", json=ask)
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "insufficient_quota"


async def test_request_larger_than_the_bucket_is_charged_all_it_used(
    make_gateway: GatewayFactory, prefix: str, store: redis.Redis
) -> None:
    client = await limited(make_gateway, prefix, tokens_per_minute=1_000)
    # Reserves 3,000 (cut to the whole bucket of 1,000) and uses 3,005: the caller then
    # waits until the bucket has refilled all of it, not only one bucket's worth.
    big = {**CHAT, "max_tokens": 3_000, "fake": {"chunks": 3_000}}
    assert (await client.post("/v1/chat/completions", json=big)).status == 200
    (key,) = store.scan_iter(match=f"{prefix}:*:tokens")
    await eventually(lambda: float(store.hget(key, "v") or 0) < -1_000)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1})
    assert resp.status == 429
    # 2,005 tokens of debt plus this request's 8, at 1,000 a minute.
    assert 115 <= int(resp.headers["Retry-After"]) <= 121
