"""JWT times: exp is required, exp and nbf hold within the leeway, times are numbers, and
no token lives longer than the maximum lifetime."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.tokens import claims, hs256, refused, sign


async def test_expired_token_is_refused() -> None:
    token = sign(claims(exp=int(time.time()) - 60))
    assert await refused(hs256(leeway_seconds=30), token) == "expired"


async def test_just_expired_token_is_accepted_within_leeway() -> None:
    token = sign(claims(exp=int(time.time()) - 10))
    assert (await hs256(leeway_seconds=30).verify(token)).subject == "alice"


async def test_token_not_valid_yet_is_refused() -> None:
    token = sign(claims(nbf=int(time.time()) + 120))
    assert await refused(hs256(), token) == "not_yet_valid"


async def test_token_without_exp_is_refused() -> None:
    assert await refused(hs256(), sign({"sub": "alice"})) == "missing_claim"


@pytest.mark.parametrize(
    "times",
    [
        {"exp": str(int(time.time()) + 600)},
        {"nbf": True},
        {"exp": 10**400},
        {"nbf": str(int(time.time()) - 60)},
        {"iat": [int(time.time())]},
        {"iat": -(10**400)},
    ],
    ids=["exp-string", "nbf-bool", "exp-huge", "nbf-string", "iat-list", "iat-huge"],
)
async def test_time_claims_must_be_numbers(times: dict[str, Any]) -> None:
    assert await refused(hs256(), sign(claims(**times))) == "bad_claim"


@pytest.mark.parametrize(
    "exp", [1e30, 2**62, int(time.time()) + 86400 + 3600], ids=["1e30", "2**62", "25h"]
)
async def test_a_token_expiring_beyond_the_maximum_lifetime_is_refused(exp: float) -> None:
    assert await refused(hs256(), sign(claims(exp=exp))) == "too_long_lived"


async def test_a_token_issued_for_longer_than_the_maximum_lifetime_is_refused() -> None:
    now = int(time.time())
    token = sign(claims(iat=now - 7200, exp=now + 600))
    assert await refused(hs256(max_lifetime_seconds=3600), token) == "too_long_lived"
    assert (await hs256(max_lifetime_seconds=9000).verify(token)).subject == "alice"


async def test_exp_is_required_even_when_require_leaves_it_out() -> None:
    assert await refused(hs256(require=["iat"]), sign({"sub": "a", "iat": 1})) == "missing_claim"


async def test_float_times_within_the_lifetime_are_accepted() -> None:
    now = time.time()
    assert (await hs256().verify(sign(claims(iat=now, nbf=now, exp=now + 60.5)))).subject
