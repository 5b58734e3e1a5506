"""The cache's settings: tiers checked against the document, tier rules over the default."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError
from gateway.policy import PolicyEnv
from gateway.registry import build_chain
from gateway.resources import Resources
from gateway.tiers import Tier
from policies.cache.policy import CachePolicy
from tests.support.gateways import gateway_config

TIERS = {"free": Tier(), "gold": Tier()}
ENV = PolicyEnv(gateway_config("http://127.0.0.1:9"), TIERS, Resources())


def cache(**settings: object) -> CachePolicy:
    chain = build_chain([{"type": "cache", **settings}], ENV)
    policy = chain.policies[0]
    assert isinstance(policy, CachePolicy)
    return policy


def test_an_unknown_tier_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        cache(tiers={"platinum": {"enabled": False}})
    assert caught.value.problems == [
        "policies[0].tiers.platinum: unknown tier 'platinum'; tiers are ['free', 'gold']"
    ]


def test_a_tiers_rules_take_the_defaults_it_leaves_out() -> None:
    policy = cache(
        scope="tier",
        default={"ttl_seconds": 60, "max_entry_bytes": 1000},
        tiers={"gold": {"ttl_seconds": 600, "scope": "user"}},
    )
    gold, free = policy.rules["gold"], policy.rules["free"]
    assert (gold.ttl_seconds, gold.max_entry_bytes, gold.scope) == (600, 1000, "user")
    assert (free.ttl_seconds, free.max_entry_bytes, free.scope) == (60, 1000, "tier")
    assert policy.default == free


@pytest.mark.parametrize(
    "settings",
    [
        {"scope": "world"},
        {"default": {"ttl_seconds": 0}},
        {"redis_url": "http://x"},
        {"key_prefix": "a b"},
        {"coalesce_wait_seconds": -1},
        {"default": {"max_entry_bytes": 0}},
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        cache(**settings)
