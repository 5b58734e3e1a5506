"""Who shares stored answers: under the default scope, never two users."""

from __future__ import annotations

from typing import Any

import orjson

from tests.support.caches import CHAT0, ask, cache_gateway, content, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import auth, static_keys

UNIQUE = {**CHAT0, "fake": {"unique": True}}


async def gateway(make_gateway: GatewayFactory, **settings: Any) -> Any:
    keys = {"type": "auth", "api_keys": False, "static_keys": static_keys("free")}
    return await cache_gateway(make_gateway, keys, sections={"tiers": {"free": {}}}, **settings)


async def test_one_users_answer_is_never_served_to_another(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await gateway(make_gateway)
    alice = await ask(client, UNIQUE, **auth("alice-1"))
    await stored(client)
    bob = await ask(client, UNIQUE, **auth("bob-1"))
    assert (alice[0], bob[0]) == ("MISS", "MISS")
    assert content(alice[1]) != content(bob[1])
    # The upstream answered each of them: bob's request reached it, with bob's body.
    assert [orjson.loads(body) for _, body in fake.received] == [UNIQUE, UNIQUE]
    await stored(client, 2)
    again = await ask(client, UNIQUE, **auth("bob-1"))
    assert (again[0], content(again[1])) == ("HIT", content(bob[1]))


async def test_the_keys_of_one_owner_share_answers(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await gateway(make_gateway)
    first = await ask(client, UNIQUE, **auth("alice-1"))
    await stored(client)
    second = await ask(client, UNIQUE, **auth("alice-2"))
    assert (first[0], second[0]) == ("MISS", "HIT")
    assert len(fake.requests) == 1


async def test_a_tier_scope_shares_answers_within_the_tier(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await gateway(make_gateway, tiers={"free": {"scope": "tier"}})
    alice = await ask(client, UNIQUE, **auth("alice-1"))
    await stored(client)
    bob = await ask(client, UNIQUE, **auth("bob-1"))
    assert (alice[0], bob[0]) == ("MISS", "HIT")
    assert content(alice[1]) == content(bob[1])


async def test_a_global_scope_shares_answers_with_everyone(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await gateway(make_gateway, scope="global")
    await ask(client, UNIQUE, **auth("alice-1"))
    await stored(client)
    assert (await ask(client, UNIQUE, **auth("bob-1")))[0] == "HIT"


async def test_without_auth_callers_are_told_apart_by_address(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client = await cache_gateway(make_gateway)
    await ask(client, UNIQUE)
    await stored(client)
    assert (await ask(client, UNIQUE))[0] == "HIT"  # the same address: the same caller
