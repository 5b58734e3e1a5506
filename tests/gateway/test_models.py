"""One model of the list (`GET /v1/models/{model}`, the SDK's `models.retrieve`), and
`HEAD` on every GET route."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import hdrs
from aiohttp.test_utils import TestClient

from tests.support.auth import STATIC, sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory

# Differ between any two answers.
_PER_ANSWER = {"date", "x-request-id"}
# The process's own metrics (CPU seconds, memory) change the length of /metrics between two reads.
_CHANGING = {"/metrics": {"content-length"}}


def sdk(client: TestClient[Any, Any], key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


async def tiered(make_gateway: GatewayFactory, fake_url: str, tmp_path: Path) -> Any:
    """Models `fake` and `hidden`; the caller's tier may use `fake` only."""
    key = {"hash": sha256(STATIC), "owner": "o", "tier": "narrow"}
    return await make_gateway(
        models={"hidden": {"upstreams": [fake_url]}},
        storage={"data_dir": str(tmp_path)},
        tiers={"narrow": {"models": ["fake"]}},
        policies=[{"type": "auth", "api_keys": False, "static_keys": [key]}],
    )


async def test_the_sdk_retrieves_a_model_as_the_list_shows_it(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    async with sdk(gateway) as client:
        model = await client.models.retrieve("fake")
        listed = [m async for m in client.models.list()]
    assert model.id == "fake"
    assert model.model_dump() == listed[0].model_dump()
    assert fake.requests == []  # answered by the gateway


async def test_an_unknown_model_is_a_404_model_not_found(gateway: TestClient[Any, Any]) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.NotFoundError) as exc:
            await client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"
    assert exc.value.param == "model"


async def test_a_model_outside_the_tier_is_a_404_like_an_unknown_one(
    make_gateway: GatewayFactory, fake_url: str, tmp_path: Path
) -> None:
    client = await tiered(make_gateway, fake_url, tmp_path)
    headers = {"Authorization": f"Bearer {STATIC}"}
    seen = await client.get("/v1/models/fake", headers=headers)
    assert seen.status == 200
    hidden = await client.get("/v1/models/hidden", headers=headers)
    unknown = await client.get("/v1/models/hidder", headers=headers)
    assert hidden.status == unknown.status == 404
    hidden_error, unknown_error = (await hidden.json())["error"], (await unknown.json())["error"]
    assert hidden_error["message"].replace("hidden", "hidder") == unknown_error["message"]
    listed = await (await client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in listed["data"]] == ["fake"]


async def test_a_model_name_with_a_slash_is_retrieved(
    make_gateway: GatewayFactory, fake_url: str
) -> None:
    client = await make_gateway(models={"org/model": {"upstreams": [fake_url]}})
    for path in ("/v1/models/org/model", "/v1/models/org%2Fmodel"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert (await resp.json())["id"] == "org/model"


def _get_paths(client: TestClient[Any, Any]) -> list[str]:
    """Every GET route of the application, its parameters filled in."""
    routes = client.app.router.routes()
    paths = {r.resource.canonical for r in routes if r.method == hdrs.METH_GET and r.resource}
    return sorted(re.sub(r"\{\w+\}", "fake", p) for p in paths)


async def test_head_answers_every_get_route_with_its_status_and_headers(
    every_policy: TestClient[Any, Any],
) -> None:
    paths = _get_paths(every_policy)
    assert {"/v1/models", "/v1/models/fake", "/health", "/openapi.json"} <= set(paths)
    for path in paths:
        got = await every_policy.get(path)
        await got.read()
        head = await every_policy.head(path)
        assert head.status == got.status, path
        assert await head.read() == b"", path
        skip = _PER_ANSWER | _CHANGING.get(path, set())
        expected = {k.lower(): v for k, v in got.headers.items() if k.lower() not in skip}
        found = {k.lower(): v for k, v in head.headers.items() if k.lower() not in skip}
        assert found == expected, path


@pytest.mark.parametrize(
    ("path", "code"),
    [("/v1/models/a%0Ab", "model_not_found"), ("/v1/chat%0Acompletions", "unknown_url")],
)
async def test_a_path_with_a_newline_in_it_gets_a_json_404(
    gateway: TestClient[Any, Any], path: str, code: str
) -> None:
    resp = await gateway.get(path)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"]["code"] == code
