"""The relay against the fake llama-server: routing, bodies, errors and limits."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory


async def test_chat_completion_is_relayed_with_usage(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert body["usage"]["completion_tokens"] == 3


async def test_non_streaming_body_reaches_upstream_unchanged(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    raw = b'{"model": "fake",   "messages": [], "temperature": 0.25, "x_custom": [1, 2]}'
    resp = await gateway.post("/v1/chat/completions", data=raw)
    assert resp.status == 200
    assert fake.requests[-1] == orjson.loads(raw)


async def test_completions_and_embeddings_are_routed(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/completions", json={"model": "fake", "prompt": "Once"})
    assert resp.status == 200
    resp = await gateway.post("/v1/embeddings", json={"model": "fake", "input": ["a", "b"]})
    assert resp.status == 200
    assert len((await resp.json())["data"]) == 2


async def test_models_lists_configured_models(make_gateway: GatewayFactory, fake_url: str) -> None:
    client = await make_gateway(models={"other": {"upstreams": [fake_url]}})
    resp = await client.get("/v1/models")
    body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake", "other"]


async def test_unknown_model_gets_404_model_not_found(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert fake.requests == []


async def test_missing_model_uses_the_only_configured_model(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json={"messages": []})
    assert resp.status == 200


async def test_invalid_json_gets_400_in_openai_shape(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/chat/completions", data=b"{not json")
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    assert fake.requests == []


async def test_wrong_field_type_gets_400_naming_the_param(gateway: TestClient[Any, Any]) -> None:
    for field, value in (("stream", "yes"), ("max_tokens", "10"), ("model", 3), ("messages", "hi")):
        resp = await gateway.post("/v1/chat/completions", json={**CHAT, field: value})
        assert resp.status == 400, field
        assert (await resp.json())["error"]["param"] == field


async def test_body_over_the_limit_gets_413(make_gateway: GatewayFactory, fake: FakeLlama) -> None:
    client = await make_gateway(server={"max_body_bytes": 1000})
    resp = await client.post("/v1/chat/completions", json={**CHAT, "pad": "x" * 2000})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"
    assert fake.requests == []


async def test_body_over_aiohttp_default_limit_is_accepted(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(server={"max_body_bytes": 4 * 1024 * 1024})
    long_prompt = "word " * 400_000  # 2 MB: over aiohttp's 1 MiB default
    body = io.BytesIO(orjson.dumps({"model": "fake", "prompt": long_prompt}))
    resp = await client.post("/v1/completions", data=body)
    assert resp.status == 200


async def test_upstream_error_status_and_body_pass_through(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 400}})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "fake failure on request"


async def test_unknown_url_gets_openai_shaped_404(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.get("/v2/whatever")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_url"


async def test_unreachable_upstream_gets_502(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(models={"dead": {"upstreams": ["http://127.0.0.1:9"]}})
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "dead"})
    assert resp.status in (502, 503)
    assert (await resp.json())["error"]["type"] == "server_error"


async def test_slow_first_byte_gets_504(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(upstream={"first_byte_timeout": 0.2})
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"first_byte_delay": 2}})
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_error"


async def test_client_authorization_is_not_sent_upstream(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_url: str
) -> None:
    client = await make_gateway(
        models={"fake": {"upstreams": [fake_url], "api_key": "upstream-secret"}}
    )
    await client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-client"}
    )
    assert fake.headers[-1]["Authorization"] == "Bearer upstream-secret"


@pytest.mark.parametrize("status", [400, 500])
async def test_an_upstream_error_that_is_not_json_reaches_the_client_in_openais_shape(
    gateway: TestClient[Any, Any], status: int
) -> None:
    body = {**CHAT, "fake": {"status": status, "plain": True}}
    resp = await gateway.post("/v1/chat/completions", json=body)
    assert resp.status == status
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_error"
    assert error["type"] == ("server_error" if status == 500 else "invalid_request_error")
