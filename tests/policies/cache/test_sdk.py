"""The OpenAI Python SDK reads hits in both forms: the same text as the answer stored."""

from __future__ import annotations

from typing import Any

import openai
from aiohttp.test_utils import TestClient

from tests.support.caches import cache_gateway, stored
from tests.support.gateways import GatewayFactory

MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def sdk(make_gateway: GatewayFactory) -> tuple[TestClient[Any, Any], openai.AsyncOpenAI]:
    client = await cache_gateway(make_gateway)
    base = str(client.make_url("/v1"))
    return client, openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0)


async def streamed_text(sdk: openai.AsyncOpenAI, **options: Any) -> tuple[str, Any, str]:
    """(text, usage, X-Cache) of a streamed answer read by the SDK."""
    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake", messages=MESSAGES, temperature=0, stream=True, **options
    )
    parts, usage = [], None
    async for chunk in raw.parse():
        parts.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    return "".join(parts), usage, raw.headers["x-cache"]


async def plain_text(sdk: openai.AsyncOpenAI) -> tuple[str, Any, str]:
    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake", messages=MESSAGES, temperature=0
    )
    answer = raw.parse()
    return answer.choices[0].message.content or "", answer.usage, raw.headers["x-cache"]


async def test_a_streamed_miss_is_read_back_plain(make_gateway: GatewayFactory) -> None:
    client, openai_client = await sdk(make_gateway)
    async with openai_client:
        text, _, result = await streamed_text(openai_client)
        await stored(client)
        again, usage, hit = await plain_text(openai_client)
    assert (result, hit) == ("MISS", "HIT")
    assert again == text != ""
    assert usage.total_tokens == 8


async def test_a_plain_miss_is_read_back_streamed(make_gateway: GatewayFactory) -> None:
    client, openai_client = await sdk(make_gateway)
    async with openai_client:
        text, _, result = await plain_text(openai_client)
        await stored(client)
        again, usage, hit = await streamed_text(
            openai_client, stream_options={"include_usage": True}
        )
        plain_again, none, _ = await streamed_text(openai_client)
    assert (result, hit) == ("MISS", "HIT")
    assert again == plain_again == text != ""
    assert usage.total_tokens == 8
    assert none is None
