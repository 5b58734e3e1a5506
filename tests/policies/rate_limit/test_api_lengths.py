"""The length fields of /v1/responses (`max_output_tokens`) and /v1/messages (`max_tokens`):
capped by the tier, and reserved by a rate limit as llama-server reads them there."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.endpoints import MESSAGES, RESPONSES
from tests.support.apis import MESSAGE, RESPONSE
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import STORAGE, TIERS, auth, limit_policy, static_keys

CAP = TIERS["free"]["max_tokens"]
RESPONSE_ESTIMATE = len("hello there") // 4 + 1
MESSAGE_ESTIMATE = (len("hi") + 16) // 4 + 1
CASES = [
    ("/v1/responses", RESPONSE, RESPONSE_ESTIMATE),
    ("/v1/messages", MESSAGE, MESSAGE_ESTIMATE),
]


async def capped(make_gateway: GatewayFactory, prefix: str) -> Any:
    return await make_gateway(
        storage=STORAGE,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys()},
            limit_policy(prefix, tiers={"free": {"tokens_per_minute": 1_000}}),
        ],
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body", "estimate"), CASES)
async def test_a_length_above_the_tier_cap_reaches_the_upstream_capped(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    prefix: str,
    stream: bool,
    path: str,
    body: dict[str, Any],
    estimate: int,
) -> None:
    client = await capped(make_gateway, prefix)
    field = "max_output_tokens" if path == RESPONSES.path else "max_tokens"
    asked = {**body, field: 100_000, "stream": stream}
    resp = await client.post(path, json=asked, headers=auth("alice-1"))
    assert resp.status == 200
    await resp.read()
    assert fake.requests[-1][field] == CAP
    assert fake.requests[-1]["max_tokens"] == CAP
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(1_000 - CAP - estimate)


@pytest.mark.parametrize(("path", "body", "estimate"), CASES)
async def test_no_length_is_the_tier_cap(
    make_gateway: GatewayFactory,
    fake: FakeLlama,
    prefix: str,
    path: str,
    body: dict[str, Any],
    estimate: int,
) -> None:
    client = await capped(make_gateway, prefix)
    asked = {k: v for k, v in body.items() if k != "max_tokens"}
    resp = await client.post(path, json=asked, headers=auth("alice-1"))
    assert resp.status == 200
    assert fake.requests[-1]["max_tokens"] == CAP
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(1_000 - CAP - estimate)


async def test_max_output_tokens_decides_the_reservation_on_responses(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    # llama-server reads it there (as its max_tokens): the tier's cap is not reserved.
    client = await limited(make_gateway, prefix)
    resp = await client.post("/v1/responses", json={**RESPONSE, "max_output_tokens": 7})
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 7 - RESPONSE_ESTIMATE)
    assert "max_tokens" not in fake.requests[-1]


async def limited(make_gateway: GatewayFactory, prefix: str) -> Any:
    default = {"tokens_per_minute": 100_000}
    return await make_gateway(storage=STORAGE, policies=[limit_policy(prefix, default=default)])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (RESPONSES.path, {"model": "fake", "instructions": "x" * 400, "input": "hi"}),
        (RESPONSES.path, {"model": "fake", "input": [{"role": "user", "content": "x" * 400}]}),
        (
            RESPONSES.path,
            {
                "model": "fake",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "x" * 400}]}],
            },
        ),
        (MESSAGES.path, {"model": "fake", "system": "x" * 400, "messages": [], "max_tokens": 1}),
        (
            MESSAGES.path,
            {
                "model": "fake",
                "system": [{"type": "text", "text": "x" * 400}],
                "messages": [],
                "max_tokens": 1,
            },
        ),
    ],
)
async def test_the_prompt_estimate_counts_instructions_and_turns(
    make_gateway: GatewayFactory, prefix: str, path: str, body: dict[str, Any]
) -> None:
    client = await limited(make_gateway, prefix)
    resp = await client.post(path, json=body)
    assert resp.status == 200
    reserved = 100_000 - int(resp.headers["x-ratelimit-remaining-tokens"])
    assert reserved - (body.get("max_tokens") or 1024) >= 100  # 400 characters, 4 a token
