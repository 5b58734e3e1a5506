"""What is stored, for how long, and what the request's Cache-Control changes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import STATE
from policies.cache.control import directives
from tests.support.caches import (
    CHAT0,
    STREAM0,
    ask,
    cache_count,
    cache_gateway,
    content,
    known_identity,
    sample,
    stored,
)
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.waiting import eventually

UNIQUE = {**CHAT0, "fake": {"unique": True}}


async def test_no_cache_answers_afresh_and_stores_the_fresh_answer(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    old = (await ask(client, UNIQUE))[1]
    await stored(client)
    result, fresh = await ask(client, UNIQUE, **{"Cache-Control": "no-cache"})
    await stored(client, 2)
    assert result == "MISS"
    assert content(fresh) != content(old)
    hit, again = await ask(client, UNIQUE)
    assert (hit, content(again)) == ("HIT", content(fresh))


async def test_no_store_neither_reads_nor_writes(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    await ask(client, UNIQUE)
    await stored(client)
    assert (await ask(client, UNIQUE, **{"Cache-Control": "max-age=0, No-Store"}))[0] == "BYPASS"
    assert (await ask(client, {**UNIQUE, "seed": 1}, **{"Cache-Control": "no-store"}))[0] == (
        "BYPASS"
    )
    assert (await ask(client, {**UNIQUE, "seed": 1}))[0] == "MISS"  # nothing was stored
    assert len(fake.requests) == 4


@pytest.mark.parametrize(
    "value",
    [
        "",
        ",,,",
        "no-cache=",
        '"no-store"',
        'no-cache="a,b"',
        "x" * 4000,
        "\t no-store \t",
        "max-age=-1",
        "=;=;",
        "private, no-transform",
    ],
)
async def test_any_cache_control_value_is_answered(
    make_gateway: GatewayFactory, value: str
) -> None:
    client = await cache_gateway(make_gateway)
    resp = await client.post("/v1/chat/completions", json=CHAT0, headers={"Cache-Control": value})
    assert resp.status == 200
    assert resp.headers["X-Cache"] in ("HIT", "MISS", "BYPASS")


def test_directives_are_read_from_every_cache_control_header() -> None:
    headers = CIMultiDict([("Cache-Control", "max-age=3"), ("cache-control", "NO-CACHE")])
    assert directives(CIMultiDictProxy(headers)) == (True, False)
    assert directives(CIMultiDictProxy(CIMultiDict())) == (False, False)


async def test_an_answer_expires_after_its_ttl(make_gateway: GatewayFactory) -> None:
    client = await cache_gateway(make_gateway, default={"ttl_seconds": 0.2})
    await ask(client, CHAT0)
    await stored(client)
    await asyncio.sleep(0.25)
    assert (await ask(client, CHAT0))[0] == "MISS"


async def test_an_answer_over_max_entry_bytes_is_not_stored(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway, default={"max_entry_bytes": 200})
    big = {**CHAT0, "fake": {"chunks": 50}}
    for body in (big, {**big, "stream": True}, big):
        assert (await ask(client, body))[0] == "MISS"
    small = await cache_gateway(make_gateway, default={"max_entry_bytes": 2000})
    await ask(small, big)
    await stored(small)
    assert (await ask(small, big))[0] == "HIT"


@pytest.mark.parametrize(
    "fake_options",
    [
        {"status": 500},
        {"finish_reason": "tool_calls"},
        {"finish_reason": "content_filter"},
        {"tool_call": True},
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_errors_and_unfinished_answers_are_not_stored(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_options: dict[str, Any], stream: bool
) -> None:
    client = await cache_gateway(make_gateway)
    body = {**CHAT0, "stream": stream, "fake": fake_options}
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=body)
        await resp.read()
        assert resp.headers["X-Cache"] == "MISS"
    assert len(fake.requests) == 2
    assert sample(client, "llama_gateway_cache_stored_entries_total") == 0


async def test_a_stream_that_broke_off_is_not_stored(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    broken = {**STREAM0, "fake": {"error_after": 2}}
    for _ in range(2):
        assert (await ask(client, broken))[0] == "MISS"
    assert len(fake.requests) == 2


async def test_a_stream_whose_client_left_is_not_stored(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    slow = {**STREAM0, "fake": {"chunks": 50, "delay": 0.02}}
    resp = await client.post("/v1/chat/completions", json=slow)
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await eventually(lambda: fake.cancelled == 1)
    assert (await ask(client, slow))[0] == "MISS"


async def test_a_model_swapped_behind_its_name_misses(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    before = await known_identity(client)
    await ask(client, CHAT0)
    await stored(client)
    assert (await ask(client, CHAT0))[0] == "HIT"
    fake.model_path = "/models/another.gguf"
    pool = client.app[STATE].pool
    await eventually(lambda: pool.identity("fake") != before)
    assert (await ask(client, CHAT0))[0] == "MISS"
    assert len(fake.requests) == 2


async def test_a_tier_with_the_cache_disabled_bypasses_it(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    anonymous = {"type": "auth", "api_keys": False, "anonymous": {"tier": "tin"}}
    client = await cache_gateway(
        make_gateway, anonymous, sections={"tiers": {"tin": {}}}, tiers={"tin": {"enabled": False}}
    )
    assert (await ask(client, CHAT0))[0] == "BYPASS"
    assert cache_count(client, "bypass") == 1
    assert sample(client, "llama_gateway_cache_bypasses_total", reason="disabled") == 1
