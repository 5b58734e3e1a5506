"""The response cache on /v1/responses and /v1/messages: a deterministic request's whole
answer is stored and served again; their streams (typed events the cache neither
assembles nor replays) bypass it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apis import MESSAGE, RESPONSE
from tests.support.caches import cache_count, cache_gateway, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory

ROUTES = [("/v1/responses", "responses", RESPONSE), ("/v1/messages", "messages", MESSAGE)]


@pytest.mark.parametrize(("path", "endpoint", "body"), ROUTES)
async def test_a_deterministic_answer_is_served_again_from_the_cache(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    path: str,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    client = await cache_gateway(make_gateway)
    asked = {**body, "temperature": 0, "fake": {"unique": True}}
    first = await client.post(path, json=asked)
    answer = await first.read()
    await stored(client)
    again = await client.post(path, json=asked)
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert await again.read() == answer
    assert len(fake.requests) == 1
    assert cache_count(client, "hit", endpoint) == 1


@pytest.mark.parametrize(("path", "endpoint", "body"), ROUTES)
async def test_a_stream_bypasses_the_cache(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    path: str,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    client = await cache_gateway(make_gateway)
    asked = {**body, "temperature": 0}
    await (await client.post(path, json=asked)).read()
    await stored(client)
    streamed = await client.post(path, json={**asked, "stream": True})
    assert streamed.headers["X-Cache"] == "BYPASS"
    assert (await streamed.read()).startswith(b"event: ")
    assert len(fake.requests) == 2
    assert cache_count(client, "bypass", endpoint) == 1


@pytest.mark.parametrize(
    ("path", "body", "opts"),
    [
        ("/v1/messages", MESSAGE, {"stop_reason": "tool_use"}),
        ("/v1/responses", RESPONSE, {"status": 400}),
    ],
)
async def test_an_unfinished_or_failed_answer_is_not_stored(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    path: str,
    body: dict[str, Any],
    opts: dict[str, Any],
) -> None:
    client = await cache_gateway(make_gateway)
    asked = {**body, "temperature": 0, "fake": opts}
    await (await client.post(path, json=asked)).read()
    again = await client.post(path, json=asked)
    assert again.headers["X-Cache"] == "MISS"
    assert len(fake.requests) == 2
