"""The key: a canonical form of what can change the answer, and which requests are cached."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import assume, given
from hypothesis import strategies as st

from policies.cache.key import IGNORED, RANDOM_SEED, cache_key, canonical, deterministic

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)
BODIES = st.dictionaries(st.text(max_size=8), JSON, max_size=6)


def key(body: dict[str, Any], **parts: str) -> str | None:
    where = {"endpoint": "chat.completions", "model": "m", "identity": "i", "scope": "s", **parts}
    return cache_key(where["endpoint"], where["model"], where["identity"], where["scope"], body)


def floated(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with every top-level integer written as a float where that keeps its value."""
    return {k: float(v) if type(v) is int and abs(v) < 2**53 else v for k, v in body.items()}


@given(BODIES)
def test_key_order_does_not_change_the_key(body: dict[str, Any]) -> None:
    reordered = dict(reversed(list(body.items())))
    assert key(body) == key(reordered)


@given(BODIES)
def test_integral_floats_and_integers_give_one_key(body: dict[str, Any]) -> None:
    assert key(body) == key(floated(body))


def test_zero_point_zero_is_zero_and_true_is_not_one() -> None:
    assert key({"temperature": 0.0}) == key({"temperature": 0})
    assert key({"x": True}) != key({"x": 1})
    assert key({"x": False}) != key({"x": 0})
    assert key({"x": 0.5}) != key({"x": 0})
    assert key({"x": "1"}) != key({"x": 1})


@given(BODIES, st.sampled_from(sorted(IGNORED)), JSON)
def test_fields_that_cannot_change_the_answer_are_left_out(
    body: dict[str, Any], name: str, value: Any
) -> None:
    assert key(body) == key({**body, name: value})


NAMES = st.text(max_size=8).filter(lambda n: n not in IGNORED)


@given(BODIES, NAMES, JSON)
def test_adding_any_other_field_changes_the_key(
    body: dict[str, Any], name: str, value: Any
) -> None:
    body.pop(name, None)
    assert key(body) != key({**body, name: value})


@given(BODIES, NAMES, JSON, JSON)
def test_a_different_value_changes_the_key(body: dict[str, Any], name: str, a: Any, b: Any) -> None:
    assume(written(a) != written(b))
    assert key({**body, name: a}) != key({**body, name: b})


def written(value: Any) -> bytes:
    return orjson.dumps(canonical(value))


def test_endpoint_model_identity_and_scope_each_change_the_key() -> None:
    body = {"messages": []}
    base = key(body)
    for part, value in (
        ("endpoint", "completions"),
        ("model", "n"),
        ("identity", "j"),
        ("scope", "t"),
    ):
        assert key(body, **{part: value}) != base


def test_huge_integral_floats_are_kept_as_floats() -> None:
    assert canonical(1e300) == 1e300
    assert canonical(-0.0) == 0
    assert key({"x": 1e300}) != key({"x": 1e299})


def test_a_body_too_deep_to_write_out_has_no_key() -> None:
    nested: Any = []
    for _ in range(300):
        nested = [nested]
    assert key({"x": nested}) is None


def test_embeddings_are_always_deterministic() -> None:
    assert deterministic("embeddings", {"input": "x", "temperature": 1})


def test_chat_is_deterministic_at_temperature_zero_or_with_a_fixed_seed() -> None:
    assert deterministic("chat.completions", {"temperature": 0})
    assert deterministic("chat.completions", {"temperature": 0.0})
    assert deterministic("completions", {"seed": 42, "temperature": 0.9})
    assert deterministic("completions", {"seed": 0})


def test_chat_is_not_deterministic_otherwise() -> None:
    assert not deterministic("chat.completions", {})
    assert not deterministic("chat.completions", {"temperature": 0.1})
    assert not deterministic("chat.completions", {"temperature": False})  # not a number
    assert not deterministic("chat.completions", {"temperature": "0"})
    assert not deterministic("chat.completions", {"seed": True})
    assert not deterministic("chat.completions", {"seed": 4.0})


def test_llama_servers_random_seed_is_not_a_fixed_seed() -> None:
    assert not deterministic("chat.completions", {"seed": -1})
    assert not deterministic("chat.completions", {"seed": RANDOM_SEED})
    assert not deterministic("chat.completions", {"seed": 2**40})


def test_requests_for_per_token_data_are_not_cached() -> None:
    assert not deterministic("chat.completions", {"temperature": 0, "logprobs": True})
    assert not deterministic("completions", {"temperature": 0, "n_probs": 3})
    assert deterministic("chat.completions", {"temperature": 0, "logprobs": False})
