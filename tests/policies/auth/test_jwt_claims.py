"""JWT claims: a valid token gives its subject, tier and scopes, under claim names the
settings choose; audience and issuer must match; a claim missing or of the wrong type
refuses the token."""

from __future__ import annotations

import time
from typing import Any

import pytest

from policies.auth.jwt import Claims
from tests.support.tokens import claims, hs256, refused, sign


async def test_hs256_token_maps_subject_tier_and_scopes() -> None:
    token = sign(claims(tier="gold", scope="chat embed"))
    got = await hs256().verify(token)
    assert got == Claims("alice", "gold", frozenset({"chat", "embed"}), got.raw)
    assert got.raw["sub"] == "alice"


async def test_claim_names_are_configurable() -> None:
    verifier = hs256(subject_claim="email", tier_claim="plan", scopes_claim="scp")
    token = sign(claims(email="bob@example.com", plan="pro", scp=["a", "b"], tier="ignored"))
    got = await verifier.verify(token)
    assert (got.subject, got.tier, got.scopes) == ("bob@example.com", "pro", frozenset("ab"))


async def test_missing_tier_is_none_for_the_policy_to_default() -> None:
    assert (await hs256().verify(sign(claims()))).tier is None


async def test_audience_and_issuer_are_accepted_when_they_match() -> None:
    verifier = hs256(audience=["gateway", "other"], issuer="https://idp")
    assert await verifier.verify(sign(claims(aud="gateway", iss="https://idp")))


async def test_wrong_audience_is_refused() -> None:
    assert await refused(hs256(audience="gateway"), sign(claims(aud="elsewhere"))) == (
        "bad_audience"
    )


async def test_wrong_issuer_is_refused() -> None:
    assert await refused(hs256(issuer="https://idp"), sign(claims(iss="https://evil"))) == (
        "bad_issuer"
    )


async def test_token_without_aud_is_refused_when_an_audience_is_configured() -> None:
    assert await refused(hs256(audience="gateway"), sign(claims())) == "missing_claim"


async def test_token_with_aud_is_refused_when_no_audience_is_configured() -> None:
    assert await refused(hs256(), sign(claims(aud="someone-else"))) == "bad_audience"


async def test_token_without_subject_is_refused() -> None:
    assert await refused(hs256(), sign({"exp": int(time.time()) + 60})) == "missing_claim"


@pytest.mark.parametrize("payload", [{"tier": 3}, {"scope": {"a": 1}}, {"sub": 42}])
async def test_claims_of_the_wrong_type_are_refused(payload: dict[str, Any]) -> None:
    assert await refused(hs256(), sign(claims(**payload))) == "bad_claim"
