"""Balancing over several upstreams and taking them out of rotation while down or loading."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.upstreams import DOWN, HEALTHY, LOADING, Pool, Upstream
from tests.support.gateways import CHAT, gateway_config
from tests.support.replicas import start_fakes


def pool_of(*in_flight: int) -> Pool:
    ups = [
        Upstream(f"http://u{i}", "m", state=HEALTHY, in_flight=n) for i, n in enumerate(in_flight)
    ]
    return Pool({"m": ups})


def test_pick_prefers_the_fewest_in_flight() -> None:
    assert pool_of(3, 1, 2).pick("m").url == "http://u1"


def test_pick_rotates_between_equally_loaded_upstreams() -> None:
    pool = pool_of(0, 0, 0)
    assert [pool.pick("m").url for _ in range(6)] == ["http://u0", "http://u1", "http://u2"] * 2


def test_pick_skips_loading_and_down_upstreams() -> None:
    pool = pool_of(0, 5)
    pool.by_model["m"][0].state = LOADING
    assert pool.pick("m").url == "http://u1"


async def wait_for(predicate: Any, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_concurrent_streams_spread_over_upstreams(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client: TestClient[Any, Any] = await aiohttp_client(create(urls))
    body = {**CHAT, "stream": True, "fake": {"chunks": 3, "delay": 0.1}}
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body) for _ in range(4))
    )
    await asyncio.gather(*(r.read() for r in responses))
    assert [len(f.requests) for f in fakes] == [2, 2]


async def test_loading_upstream_is_left_out_until_healthy(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    fakes[0].loading = True
    client: TestClient[Any, Any] = await aiohttp_client(create(urls))
    pool = client.app[STATE].pool
    await wait_for(lambda: pool.by_model["fake"][0].state == LOADING)
    for _ in range(4):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert [len(f.requests) for f in fakes] == [0, 4]
    fakes[0].loading = False
    await wait_for(lambda: pool.by_model["fake"][0].state == HEALTHY)
    for _ in range(4):
        await client.post("/v1/chat/completions", json=CHAT)
    assert len(fakes[0].requests) > 0


async def test_no_ready_upstream_gets_503_and_ready_says_why(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 1)
    fakes[0].loading = True
    client: TestClient[Any, Any] = await aiohttp_client(create(urls))
    await wait_for(lambda: client.app[STATE].pool.by_model["fake"][0].state == LOADING)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    ready = await client.get("/ready")
    assert ready.status == 503
    assert (await ready.json())["checks"] == {"model:fake": False}
    assert fakes[0].requests == []


async def test_health_is_always_ok_and_ready_when_upstreams_are(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    _, urls = await start_fakes(aiohttp_server, 1)
    client: TestClient[Any, Any] = await aiohttp_client(create(urls))
    assert (await client.get("/health")).status == 200
    await wait_for(lambda: client.app[STATE].pool.by_model["fake"][0].state == HEALTHY)
    assert (await client.get("/ready")).status == 200


def create(urls: list[str]) -> Any:
    """Balanced by fewest in flight (the same prompt sent again spreads over `urls`)."""
    models = {"fake": {"upstreams": urls, "routing": "least_in_flight"}}
    config = gateway_config(urls[0], models=models)
    return create_app(config)


async def test_credentials_in_an_upstream_url_are_sent_to_it_and_shown_to_no_one(
    aiohttp_client: Any, aiohttp_server: Any, caplog: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 1)
    secured = urls[0].replace("http://", "http://gw:Upstream-Pw-123@")
    down = "http://gw:Upstream-Pw-123@127.0.0.1:9"  # nothing listens: refused at once
    config = gateway_config(secured, models={"other": {"upstreams": [down]}})
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    pool = client.app[STATE].pool
    await wait_for(lambda: pool.by_model["other"][0].state == DOWN)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    refused = await client.post("/v1/chat/completions", json={**CHAT, "model": "other"})
    assert refused.status == 503
    shown = [await refused.text(), await (await client.get("/metrics")).text(), caplog.text]
    assert fakes[0].headers[-1]["Authorization"].startswith("Basic ")  # still authenticated
    assert all("Upstream-Pw-123" not in text for text in shown)
    assert "http://127.0.0.1:9 down" in shown[0]  # the upstream is still named
