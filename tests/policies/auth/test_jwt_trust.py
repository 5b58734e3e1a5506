"""What a genuine token may ask for: its tier only through jwt.tiers, endpoints by scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.cli import main
from tests.support.auth import SECRET, auth_settings, token
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory


@pytest.fixture
def start(auth_gateway: GatewayFactory) -> GatewayFactory:
    async def started(**settings: Any) -> TestClient[Any, Any]:
        return await auth_gateway({"type": "request_id"}, auth_settings(api_keys=False, **settings))

    return started


async def chat(client: TestClient[Any, Any], bearer: str, **body: Any) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, **body}, headers={"Authorization": f"Bearer {bearer}"}
    )
    return resp.status, await resp.json()


async def test_without_a_tier_map_the_tier_claim_is_ignored(
    start: GatewayFactory, fake: FakeLlama
) -> None:
    client = await start(default_tier="free")
    status, _ = await chat(client, token(tier="enterprise"), max_tokens=100)
    assert status == 200
    assert fake.requests[-1]["max_tokens"] == 5  # free's cap: the claim picked nothing


async def test_without_a_tier_map_or_default_tier_a_token_is_forbidden(
    start: GatewayFactory,
) -> None:
    status, body = await chat(await start(), token(tier="enterprise"))
    assert (status, body["error"]["code"]) == (403, "permission_denied")


async def test_a_tier_claim_outside_the_map_is_forbidden(
    start: GatewayFactory, fake: FakeLlama
) -> None:
    client = await start(jwt={"tiers": {"basic": "free", "pro": "premium"}}, default_tier="free")
    status, body = await chat(client, token(tier="enterprise"))
    assert status == 403
    assert body["error"] == {
        "message": "Your token's tier 'enterprise' is not one this gateway accepts; "
        "ask an admin to map it under jwt.tiers.",
        "type": "permission_error",
        "param": None,
        "code": "permission_denied",
    }
    assert fake.requests == []


async def test_a_mapped_tier_claim_gives_its_tier(start: GatewayFactory, fake: FakeLlama) -> None:
    client = await start(jwt={"tiers": {"basic": "free", "pro": "premium"}}, default_tier="free")
    assert (await chat(client, token(tier="pro"), max_tokens=100))[0] == 200
    assert (await chat(client, token(), max_tokens=100))[0] == 200  # no claim: default tier
    assert [r["max_tokens"] for r in fake.requests] == [100, 5]


async def test_an_endpoint_with_a_required_scope_needs_it_in_the_token(
    start: GatewayFactory, fake: FakeLlama
) -> None:
    client = await start(
        jwt={"required_scopes": {"chat.completions": "llm:chat"}}, default_tier="premium"
    )
    status, body = await chat(client, token(scope="llm:embed"))
    assert (status, body["error"]["code"]) == (403, "permission_denied")
    assert "lacks the scope 'llm:chat'" in body["error"]["message"]
    assert (await chat(client, token(scope="llm:embed llm:chat")))[0] == 200
    models = await client.get("/v1/models", headers={"Authorization": f"Bearer {token()}"})
    assert models.status == 200  # an endpoint not named needs no scope
    assert len(fake.requests) == 1


def test_check_config_names_a_jwt_tier_mapped_to_an_unknown_tier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    path = tmp_path / "policy.yaml"
    path.write_text(
        "tiers: {free: {}}\npolicies:\n  - type: auth\n    api_keys: false\n"
        "    jwt: {algorithms: [HS256], secret_env: TEST_JWT_SECRET, tiers: {pro: gold}}\n"
    )
    assert main(["check-config", str(path)]) == 2
    assert "policies[0].jwt.tiers.pro: unknown tier 'gold'" in capsys.readouterr().err
