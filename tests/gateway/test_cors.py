"""CORS for browser clients (`server.cors`): preflights before any policy, the allowed
origin on every answer (errors and streams too), nothing at all when it is off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ConfigError, parse_config
from tests.support.auth import STATIC, sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory

APP = "https://app.example.com"
EVIL = "https://evil.example.com"
CORS = {"cors": {"origins": [APP, "http://localhost:5173"]}}
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}


async def with_auth(make_gateway: GatewayFactory, tmp_path: Path, **server: Any) -> Any:
    key = {"hash": sha256(STATIC), "owner": "o", "tier": "t"}
    return await make_gateway(
        server=server,
        storage={"data_dir": str(tmp_path)},
        tiers={"t": {}},
        policies=[
            {"type": "request_id"},
            {"type": "auth", "api_keys": False, "static_keys": [key]},
        ],
    )


async def test_a_preflight_is_answered_without_credentials_before_any_policy(
    make_gateway: GatewayFactory, fake: FakeLlama, tmp_path: Path
) -> None:
    client = await with_auth(make_gateway, tmp_path, **CORS)
    resp = await client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == PREFLIGHT[
        "Access-Control-Request-Headers"
    ].replace(" ", "").replace(",", ", ")
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in resp.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert fake.requests == []


async def test_a_preflight_from_another_origin_gets_no_cors_headers(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await with_auth(make_gateway, tmp_path, **CORS)
    resp = await client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": EVIL})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "origin_not_allowed"
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    assert resp.headers["Vary"] == "Origin"


async def test_answers_to_an_allowed_origin_carry_it_errors_included(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    client = await with_auth(make_gateway, tmp_path, **CORS)
    key = {"Authorization": f"Bearer {STATIC}", "Origin": APP}
    answers = [
        await client.post("/v1/chat/completions", json=CHAT, headers=key),
        await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP}),  # 401
        await client.post("/v1/nowhere", json=CHAT, headers=key),  # 404
        await client.get("/v1/models", headers=key),
    ]
    assert [a.status for a in answers] == [200, 401, 404, 200]
    for answer in answers:
        assert answer.headers["Access-Control-Allow-Origin"] == APP
        assert answer.headers["Access-Control-Expose-Headers"] == "*"
        assert answer.headers["Vary"] == "Origin"


async def test_an_answer_to_another_origin_carries_no_allowance_but_varies_by_origin(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway(server=CORS)
    for headers in ({"Origin": EVIL}, {}, {"Origin": APP + "/"}, {"Origin": "null"}):
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers, headers
        assert resp.headers["Vary"] == "Origin"


async def test_a_stream_carries_the_cors_headers(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(server=CORS)
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"Origin": APP}
    )
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Vary"] == "Origin"
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_any_origin_is_answered_with_the_wildcard(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(server={"cors": {"origins": ["*"], "headers": ["Content-Type"]}})
    resp = await client.get("/v1/models", headers={"Origin": EVIL})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.options("/v1/models", headers={**PREFLIGHT, "Origin": EVIL})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Allow-Headers"] == "Content-Type"


async def test_with_cors_off_nothing_changes(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert resp.status == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    assert "Vary" not in resp.headers
    resp = await gateway.options("/v1/chat/completions", headers=PREFLIGHT)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_url"


async def test_an_options_request_that_is_no_preflight_is_an_unknown_url(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway(server=CORS)
    resp = await client.options("/v1/chat/completions", headers={"Origin": APP})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_url"
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    resp = await client.options("/v1/nowhere", headers=PREFLIGHT)
    assert resp.status == 404


async def test_only_header_names_asked_for_are_echoed(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(server=CORS)
    asked = "x-good, bad header, x-also-good,,\u00e9t\u00e9, " + "x" * 100
    headers = {**PREFLIGHT, "Access-Control-Request-Headers": asked}
    resp = await client.options("/v1/chat/completions", headers=headers)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Headers"] == "x-good, x-also-good"


@pytest.mark.parametrize(
    "origin", ["https://app.example.com/", "app.example.com", "https://App.example.com", "ftp://x"]
)
def test_an_origin_that_no_browser_sends_is_a_configuration_error(origin: str) -> None:
    raw = {"models": {"m": {"upstreams": ["http://127.0.0.1:1"]}}}
    with pytest.raises(ConfigError, match=r"server\.cors\.origins: .*is not an origin"):
        parse_config({**raw, "server": {"cors": {"origins": [origin]}}})
