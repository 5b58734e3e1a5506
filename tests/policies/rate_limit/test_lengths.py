"""How long an answer may be: length fields checked, capped by the tier in every field
llama-server reads, and reserved by the largest of them times the answers generated."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.validate import INT32_MAX, LENGTHS, READ_LENGTHS
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import CHAT, STORAGE, TIERS, auth, limit_policy, static_keys

CAP = TIERS["free"]["max_tokens"]
PROMPT = {"model": "fake", "prompt": "hello there"}
CHAT_ESTIMATE = (len("hello there") + 16) // 4 + 1  # the prompt estimate of CHAT


def error_of(field: str, value: int) -> dict[str, Any]:
    low = value < 1
    which, bound = ("below minimum", ">= 1") if low else ("above maximum", f"<= {INT32_MAX}")
    hint = " Leave it out for the longest answer allowed." if field in LENGTHS else ""
    return {
        "error": {
            "message": f"Invalid '{field}': integer {which} value. Expected a value {bound}, "
            f"but got {value} instead.{hint}",
            "type": "invalid_request_error",
            "param": field,
            "code": "integer_below_min_value" if low else "integer_above_max_value",
        }
    }


@pytest.mark.parametrize("field", LENGTHS)
@pytest.mark.parametrize("value", [-1, 0, -(2**40)])
async def test_length_below_one_is_refused_naming_the_parameter(
    gateway: TestClient[Any, Any], fake: FakeLlama, field: str, value: int
) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", PROMPT)):
        resp = await gateway.post(path, json={**body, field: value})
        assert resp.status == 400
        assert await resp.json() == error_of(field, value)
    assert fake.requests == []


@pytest.mark.parametrize("field", ["n", "n_cmpl"])
@pytest.mark.parametrize("value", [0, -3])
async def test_answer_count_below_one_is_refused(
    gateway: TestClient[Any, Any], fake: FakeLlama, field: str, value: int
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, field: value})
    assert resp.status == 400
    assert await resp.json() == error_of(field, value)
    assert fake.requests == []


@pytest.mark.parametrize("field", [*LENGTHS, "n", "n_cmpl"])
async def test_count_llama_server_would_wrap_around_is_refused(
    gateway: TestClient[Any, Any], fake: FakeLlama, field: str
) -> None:
    # llama-server reads 32-bit integers: 2**32 - 1 would be -1, "until the context is full".
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, field: 2**32 - 1})
    assert resp.status == 400
    assert await resp.json() == error_of(field, 2**32 - 1)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("value", "kind"), [("5", "string"), (5.0, "float"), (True, "boolean"), ([5], "array")]
)
@pytest.mark.parametrize("field", [*LENGTHS, "n", "n_cmpl"])
async def test_length_that_is_not_an_integer_is_refused(
    gateway: TestClient[Any, Any], fake: FakeLlama, field: str, value: Any, kind: str
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, field: value})
    assert resp.status == 400
    assert (await resp.json())["error"] == {
        "message": f"'{field}' must be an integer, not {kind}.",
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }
    assert fake.requests == []


async def test_null_length_is_passed_on_as_sent(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**CHAT, "max_tokens": None})
    assert resp.status == 200
    assert fake.requests[-1]["max_tokens"] is None


async def capped(make_gateway: GatewayFactory, prefix: str, **free: Any) -> Any:
    """A gateway whose static keys are of the tier capped at CAP tokens."""
    return await make_gateway(
        storage=STORAGE,
        tiers=TIERS,
        policies=[
            {"type": "auth", "api_keys": False, "static_keys": static_keys()},
            limit_policy(prefix, tiers={"free": free}),
        ],
    )


ABSENT = object()
STATES = [ABSENT, None, CAP - 13, CAP + 1, 100_000]


async def test_upstream_never_receives_a_length_above_the_tier_cap(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str
) -> None:
    client = await capped(make_gateway, prefix)
    combinations = list(itertools.product(STATES, repeat=len(LENGTHS)))
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", PROMPT)):
        for states in combinations:
            asked = {f: v for f, v in zip(LENGTHS, states, strict=True) if v is not ABSENT}
            resp = await client.post(path, json={**base, **asked}, headers=auth("alice-1"))
            assert resp.status == 200, asked
            received = fake.requests[-1]
            expected = {f: None if v is None else min(v, CAP) for f, v in asked.items()}
            if expected.get("max_tokens") is None:
                # The length llama-server will use, in the field every build reads.
                named = [expected.get(f) for f in READ_LENGTHS]
                expected["max_tokens"] = next((v for v in named if v is not None), CAP)
            assert {f: received[f] for f in LENGTHS if f in received} == expected, asked
    assert len(fake.requests) == 2 * len(combinations)


async def test_reservation_is_the_largest_length_field_under_the_cap(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    client = await capped(make_gateway, prefix, tokens_per_minute=1_000)
    body = {**CHAT, "max_completion_tokens": 1, "n_predict": 100_000}
    resp = await client.post("/v1/chat/completions", json=body, headers=auth("alice-1"))
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(1_000 - CAP - CHAT_ESTIMATE)


async def limited(make_gateway: GatewayFactory, prefix: str) -> Any:
    default = {"tokens_per_minute": 100_000}
    return await make_gateway(storage=STORAGE, policies=[limit_policy(prefix, default=default)])


@pytest.mark.parametrize(
    "lengths",
    [
        {"max_completion_tokens": 1, "max_tokens": 5_000},
        {"max_tokens": 1, "max_completion_tokens": 5_000},
        {"max_tokens": 10, "n_predict": 5_000},
        {"n_predict": 5_000, "max_completion_tokens": 3},
        {"max_output_tokens": 5_000, "max_tokens": 2},
    ],
)
async def test_reservation_is_the_largest_length_field(
    make_gateway: GatewayFactory, prefix: str, lengths: dict[str, int]
) -> None:
    client = await limited(make_gateway, prefix)
    resp = await client.post("/v1/chat/completions", json={**CHAT, **lengths})
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 5_000 - CHAT_ESTIMATE)


@pytest.mark.parametrize("choices", [{"n": 3}, {"n_cmpl": 3}, {"n": 1, "n_cmpl": 3}])
async def test_reservation_counts_every_answer_of_every_prompt(
    make_gateway: GatewayFactory, prefix: str, choices: dict[str, int]
) -> None:
    client = await limited(make_gateway, prefix)
    # Three prompts, three answers each: llama-server generates nine answers.
    body = {"model": "fake", "prompt": ["ab", "cd", "ef"], "max_tokens": 100, **choices}
    resp = await client.post("/v1/completions", json=body)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 900 - (6 // 4 + 1))


@pytest.mark.parametrize("usage", [True, False])
async def test_capped_stream_reaches_the_upstream_capped(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, usage: bool
) -> None:
    client = await capped(make_gateway, prefix)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": usage}}
    body |= {"n_predict": 100_000, "max_tokens": CAP // 2}
    resp = await client.post("/v1/chat/completions", json=body, headers=auth("alice-1"))
    assert resp.status == 200
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert (fake.requests[-1]["n_predict"], fake.requests[-1]["max_tokens"]) == (CAP, CAP // 2)


async def test_reservation_of_a_length_llama_server_does_not_read_is_the_default(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    # On chat completions llama-server ignores max_output_tokens (/v1/responses's name).
    client = await limited(make_gateway, prefix)
    body = {**CHAT, "max_output_tokens": 3}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(100_000 - 1024 - CHAT_ESTIMATE)
