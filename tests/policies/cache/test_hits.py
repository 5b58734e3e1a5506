"""What is served from the cache, in which form, with which headers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import sse
from tests.support.caches import (
    CHAT0,
    COMPLETION0,
    EMBED,
    STREAM0,
    ask,
    cache_count,
    cache_gateway,
    cache_policy,
    content,
    sample,
    stored,
)
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory


@pytest.fixture
async def cached(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await cache_gateway(make_gateway)


async def test_a_deterministic_answer_is_served_again_without_the_upstream(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    first, body = await ask(cached, CHAT0)
    await stored(cached)
    resp = await cached.post("/v1/chat/completions", json=CHAT0)
    assert (first, resp.headers["X-Cache"]) == ("MISS", "HIT")
    assert resp.headers["Age"] == "0"
    assert await resp.read() == body
    assert len(fake.requests) == 1
    assert cache_count(cached, "miss") == cache_count(cached, "hit") == 1
    assert sample(cached, "llama_gateway_cache_tokens_saved_total", model="fake") == 8


async def test_a_request_that_is_not_deterministic_bypasses_the_cache(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    for body in (CHAT, {**CHAT, "temperature": 0.7}, {**CHAT, "seed": -1}):
        assert (await ask(cached, body))[0] == "BYPASS"
        assert (await ask(cached, body))[0] == "BYPASS"
    assert len(fake.requests) == 6
    assert sample(cached, "llama_gateway_cache_bypasses_total", reason="not_cacheable") == 6


async def test_a_fixed_seed_is_cached(cached: TestClient[Any, Any], fake: FakeLlama) -> None:
    body = {**CHAT, "seed": 42, "temperature": 0.8}
    assert (await ask(cached, body))[0] == "MISS"
    await stored(cached)
    assert (await ask(cached, body))[0] == "HIT"
    assert (await ask(cached, {**body, "seed": 43}))[0] == "MISS"


async def test_embeddings_are_cached(cached: TestClient[Any, Any], fake: FakeLlama) -> None:
    first = await ask(cached, EMBED, "/v1/embeddings")
    await stored(cached)
    second = await ask(cached, EMBED, "/v1/embeddings")
    assert (first[0], second[0]) == ("MISS", "HIT")
    assert first[1] == second[1]
    assert len(fake.requests) == 1


async def test_a_streamed_answer_is_served_to_a_plain_request(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    result, streamed = await ask(cached, STREAM0)
    await stored(cached)
    again, plain = await ask(cached, CHAT0)
    assert (result, again) == ("MISS", "HIT")
    assert content(plain) == content(streamed) == "tok0 tok1 tok2 "
    assert orjson.loads(plain)["usage"]["total_tokens"] == 8
    assert len(fake.requests) == 1


async def test_a_plain_answer_is_replayed_to_a_streaming_client(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    result, plain = await ask(cached, CHAT0)
    await stored(cached)
    resp = await cached.post("/v1/chat/completions", json=STREAM0)
    streamed = await resp.read()
    assert (result, resp.headers["X-Cache"]) == ("MISS", "HIT")
    assert resp.content_type == "text/event-stream"
    assert content(streamed) == content(plain)
    assert streamed.endswith(sse.DONE)
    assert b'"usage"' not in streamed  # not asked for
    asked = {**STREAM0, "stream_options": {"include_usage": True}}
    with_usage = (await ask(cached, asked))[1]
    usage = [sse.event_json(e) for e in sse.events(with_usage) if b'"usage"' in e]
    assert usage[0] is not None
    assert usage[0]["usage"]["total_tokens"] == 8
    assert len(fake.requests) == 1


async def test_completions_are_cached_both_ways(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    stream = {**COMPLETION0, "stream": True}
    result, streamed = await ask(cached, stream, "/v1/completions")
    await stored(cached)
    again, plain = await ask(cached, COMPLETION0, "/v1/completions")
    replayed = (await ask(cached, stream, "/v1/completions"))[1]
    assert (result, again) == ("MISS", "HIT")
    assert content(streamed) == content(plain) == content(replayed) == "tok0 tok1 tok2 "
    assert orjson.loads(plain)["object"] == "text_completion"
    assert len(fake.requests) == 1


async def test_the_model_list_says_it_bypassed(cached: TestClient[Any, Any]) -> None:
    resp = await cached.get("/v1/models")
    assert resp.headers["X-Cache"] == "BYPASS"


async def test_an_error_answer_says_it_missed(cached: TestClient[Any, Any]) -> None:
    resp = await cached.post("/v1/chat/completions", json={**CHAT0, "fake": {"status": 500}})
    assert resp.status == 500
    assert resp.headers["X-Cache"] == "MISS"
    unknown = await cached.post("/v1/chat/completions", json={**CHAT0, "model": "nope"})
    assert unknown.status == 404
    assert unknown.headers["X-Cache"] == "BYPASS"
    broken = await cached.post("/v1/chat/completions", data=b"{not json")
    assert broken.status == 400
    assert broken.headers["X-Cache"] == "BYPASS"


async def test_a_body_too_deep_to_write_out_is_relayed_uncached(
    cached: TestClient[Any, Any], fake: FakeLlama
) -> None:
    for depth in (300, 990):
        nested = b"[" * depth + b"]" * depth
        body = b'{"model": "fake", "temperature": 0, "messages": [], "x": ' + nested + b"}"
        resp = await cached.post("/v1/chat/completions", data=body)
        assert resp.status == 200
        assert resp.headers["X-Cache"] == "BYPASS"


async def test_what_serves_the_model_unknown_bypasses(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    fake.loading = True  # no probe reads what it serves
    client = await make_gateway(policies=[cache_policy()])
    resp = await client.post("/v1/chat/completions", json=CHAT0)
    assert resp.headers["X-Cache"] == "BYPASS"
    assert sample(client, "llama_gateway_cache_bypasses_total", reason="identity_unknown") == 1
