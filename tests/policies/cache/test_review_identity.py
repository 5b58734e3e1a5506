"""What serves a model, as the cache keys on it: an upstream whose model could have changed
and that cannot say what it serves must not have its answers stored, nor old ones served."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.upstreams import HEALTHY, LOADING
from tests.support.caches import CHAT0, ask, cache_gateway, cache_policy, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory, gateway_config
from tests.support.waiting import eventually

UNIQUE = {**CHAT0, "fake": {"unique": True}}


async def test_an_upstream_back_with_another_model_and_no_props_serves_no_old_answer(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    first = await ask(client, UNIQUE)
    await stored(client)
    upstream = client.app[STATE].pool.by_model["fake"][0]
    # Restarted with another model file; its /props fails once it is back.
    fake.loading = True
    await eventually(lambda: upstream.state == LOADING)
    fake.model_path, fake.props_answer = "/models/another.gguf", (500, b"{}")
    fake.loading = False
    await eventually(lambda: upstream.state == HEALTHY)
    reads = fake.props_reads
    await eventually(lambda: fake.props_reads > reads + 1)  # a whole probe round since
    again = await ask(client, UNIQUE)
    assert again[0] != "HIT", "an answer of the old model file, served for the new one"
    assert again[1] != first[1]


async def test_an_upstream_that_cannot_say_what_it_serves_stores_nothing_under_anothers(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    known, unknown = FakeLlama(), FakeLlama()
    unknown.model_path, unknown.props_answer = "/models/other.gguf", (500, b"{}")
    urls = [str((await aiohttp_server(f.app())).make_url("")).rstrip("/") for f in (known, unknown)]
    # By fewest in flight, so that ties rotate over both upstreams (by prefix, four new
    # prompts follow their anchors: all on one upstream for 1 port pair in 16).
    models = {"fake": {"upstreams": urls, "routing": "least_in_flight"}}
    config = gateway_config(urls[0], models=models, policies=[cache_policy()])
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    await eventually(lambda: known.props_reads > 1 and unknown.props_reads > 1)
    results = []
    for n in range(4):  # ties rotate: both upstreams answer
        body = {**CHAT0, "messages": [{"role": "user", "content": f"q{n}"}]}
        results.append((await ask(client, body))[0])
    assert unknown.requests, "the second upstream answered some"
    assert "MISS" not in results, (
        "answers of an upstream whose model is unknown were stored under the other's identity"
    )
