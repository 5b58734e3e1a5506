"""Refusals on /v1/messages, whichever part of the gateway gives them, reach Anthropic's SDK
in Anthropic's error shape with their status: a credential missing or wrong (401), a
tier's refusal (403), a rate limit (429), the gateway's own server_busy (503)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestClient

from tests.support.apis import MESSAGE
from tests.support.auth import STATIC, auth_settings, sha256, token
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import limit_policy, unique_prefix
from tests.support.replicas import start_fakes
from tests.support.waiting import eventually

TIERS = {"premium": {}, "chat_only": {"endpoints": ["chat.completions"]}}
CHAT_ONLY = "chat-only-key-for-the-messages-tests-0123"


def sdk(client: TestClient[Any, Any], **auth: Any) -> anthropic.AsyncAnthropic:
    base = str(client.make_url("")).rstrip("/")
    return anthropic.AsyncAnthropic(base_url=base, max_retries=0, **auth)


@pytest.fixture
async def guarded(
    make_gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> TestClient[Any, Any]:
    """Auth with a static key (premium), JWTs and a chat-only key; premium callers may
    send one request a minute."""
    monkeypatch.setenv("TEST_JWT_SECRET", "hs256-secret-for-the-auth-tests-" + "x" * 16)
    auth = auth_settings(api_keys=False, default_tier="premium")
    auth["static_keys"].append({"hash": sha256(CHAT_ONLY), "owner": "c", "tier": "chat_only"})
    prefix = unique_prefix()
    return await make_gateway(
        storage={"data_dir": str(tmp_path)},
        tiers=TIERS,
        policies=[auth, limit_policy(prefix, tiers={"premium": {"requests_per_minute": 1}})],
    )


def kind_of(error: anthropic.APIStatusError) -> str:
    body: Any = error.body
    assert body["type"] == "error"
    assert isinstance(body["error"]["message"], str)
    return str(body["error"]["type"])


def credential_of(kind: str) -> str:
    """A static key, or a JWT made now (one made at collection may expire before its test
    runs in a long suite)."""
    return STATIC if kind == "key" else token()


@pytest.mark.parametrize(("field", "kind"), [("api_key", "key"), ("auth_token", "jwt")])
async def test_the_sdk_s_credential_is_accepted(
    guarded: TestClient[Any, Any], field: str, kind: str
) -> None:
    async with sdk(guarded, **{field: credential_of(kind)}) as client:
        message = await client.messages.create(**MESSAGE)
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("kind", ["key", "jwt"])
async def test_a_key_or_token_in_x_api_key_is_accepted(
    guarded: TestClient[Any, Any], kind: str
) -> None:
    # Anthropic's header, which its SDK sent before 2.x and its API documents.
    headers = {"x-api-key": credential_of(kind)}
    resp = await guarded.post("/v1/messages", json=MESSAGE, headers=headers)
    assert resp.status == 200


async def test_a_wrong_key_is_an_authentication_error(guarded: TestClient[Any, Any]) -> None:
    async with sdk(guarded, api_key="wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as raised:
            await client.messages.create(**MESSAGE)
    assert (raised.value.status_code, kind_of(raised.value)) == (401, "authentication_error")


async def test_a_missing_key_is_an_authentication_error(guarded: TestClient[Any, Any]) -> None:
    resp = await guarded.post("/v1/messages", json=MESSAGE)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["type"] == "authentication_error"
    assert "x-api-key" in body["error"]["message"]


async def test_a_tier_without_the_route_is_a_permission_error(
    guarded: TestClient[Any, Any],
) -> None:
    async with sdk(guarded, api_key=CHAT_ONLY) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as raised:
            await client.messages.create(**MESSAGE)
    assert kind_of(raised.value) == "permission_error"


async def test_a_rate_limit_is_a_rate_limit_error_with_its_headers(
    guarded: TestClient[Any, Any],
) -> None:
    async with sdk(guarded, api_key=STATIC) as client:
        await client.messages.create(**MESSAGE)
        with pytest.raises(anthropic.RateLimitError) as raised:
            await client.messages.create(**MESSAGE)
    assert kind_of(raised.value) == "rate_limit_error"
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(raised.value.response.headers["retry-after"]) >= 1


async def test_server_busy_is_an_overloaded_error(
    make_gateway: GatewayFactory, aiohttp_server: Any
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await make_gateway(
        models={"fake": {"upstreams": urls, "slots": 1}}, upstream={"admission": {"max_queue": 0}}
    )
    held = {**MESSAGE, "fake": {"first_byte_delay": 1.0}}
    async with sdk(client, api_key="x") as anthropic_client:
        holder = asyncio.create_task(client.post("/v1/messages", json=held))
        await eventually(lambda: fake.in_flight == 1)
        with pytest.raises(anthropic.InternalServerError) as raised:
            await anthropic_client.messages.create(**MESSAGE)
        assert fake.in_flight == 1  # the holder still has the slot
    assert (raised.value.status_code, kind_of(raised.value)) == (503, "overloaded_error")
    assert "busy" in raised.value.body["error"]["message"]  # type: ignore[index]
    assert (await holder).status == 200
