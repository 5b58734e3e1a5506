"""The rate-limit policy's pure parts: header formats, key layout, token estimates, windows."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import orjson
import pytest

from gateway.redis_client import ReplyError
from policies.rate_limit.buckets import (
    Windows,
    completion_tokens,
    make_plan,
    prompt_tokens,
    safe_id,
)
from policies.rate_limit.embedded import Embedded
from policies.rate_limit.headers import duration, retry_after
from policies.rate_limit.settings import Limits, TierLimits


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (17, "17ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (6000, "6s"),
        (360_000, "6m0s"),
        (61_250, "1m1.25s"),
        (7_200_000, "2h0m0s"),
    ],
)
def test_reset_is_written_like_openai(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(ms) for ms in (1, 999, 1000, 1001, 30_000)] == ["1", "1", "1", "2", "30"]


def hash_tags(keys: list[str]) -> set[str]:
    return {re.search(r"\{([^}]*)\}", key).group(1) for key in keys}  # type: ignore[union-attr]


def test_keys_of_one_call_share_one_hash_tag_per_caller() -> None:
    plan = make_plan("p", "free", TierLimits(requests_per_minute=1, concurrency=2), "key:a", None)
    assert hash_tags([b.key for b in plan.buckets]) == {"key:a"}
    other = make_plan("p", "free", TierLimits(requests_per_minute=1), "key:b", None)
    assert hash_tags([b.key for b in other.buckets]) == {"key:b"}


def test_per_user_buckets_put_a_users_keys_in_one_slot() -> None:
    limits = TierLimits(requests_per_minute=1, per_user=Limits(tokens_per_minute=5))
    plan = make_plan("p", "free", limits, "key:a", "alice")
    assert hash_tags([b.key for b in plan.buckets]) == {"user:key:alice"}
    assert [(b.scope, b.unit) for b in plan.buckets] == [("key", "requests"), ("user", "tokens")]


def test_whole_tier_buckets_put_the_tier_in_one_slot() -> None:
    limits = TierLimits(
        requests_per_minute=1,
        per_user=Limits(requests_per_minute=2),
        whole_tier=Limits(requests_per_minute=3),
    )
    plan = make_plan("p", "free", limits, "key:a", "alice")
    assert hash_tags([b.key for b in plan.buckets]) == {"tier:free"}
    assert len(plan.buckets) == 3


def test_odd_principals_cannot_break_the_hash_tag() -> None:
    assert safe_id("key:3f9a0c1b2d4e") == "key:3f9a0c1b2d4e"
    assert safe_id("jwt:{evil}") != "jwt:{evil}"
    assert "{" not in safe_id("jwt:{evil}")
    assert " " not in safe_id("a b")
    plan = make_plan("p", None, Limits(requests_per_minute=1), "jwt:{evil} x", None)
    assert plan.buckets[0].key.count("{") == 1


def test_prompt_estimate_counts_message_text() -> None:
    short = prompt_tokens("chat.completions", {"messages": [{"role": "user", "content": "hi"}]})
    long = prompt_tokens(
        "chat.completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 4000}]}]},
    )
    assert short < 10
    assert 1000 <= long <= 1010
    assert prompt_tokens("embeddings", {"input": ["a" * 400, "b" * 400]}) == 201
    assert prompt_tokens("completions", {"prompt": [1, 2, 3, 4]}) == 5


def test_answer_estimate_uses_max_tokens_capped_by_the_tier_times_n() -> None:
    chat = "chat.completions"
    assert completion_tokens(chat, {"max_tokens": 100}, None, 1024) == 100
    assert completion_tokens(chat, {"max_completion_tokens": 100, "n": 3}, None, 1024) == 300
    assert completion_tokens(chat, {}, None, 1024) == 1024
    assert completion_tokens(chat, {}, 64, 1024) == 64
    assert completion_tokens(chat, {"max_tokens": 5000}, 64, 1024) == 64


def test_answer_estimate_counts_each_prompt_of_a_completions_request() -> None:
    body = {"prompt": ["a", "b"], "max_tokens": 10, "n": 2}
    assert completion_tokens("completions", body, None, 1024) == 40
    # Token ids (even mixed with text) are one prompt.
    assert completion_tokens("completions", {"prompt": [1, "a"], "max_tokens": 10}, None, 1) == 10
    assert completion_tokens("completions", {"prompt": [], "max_tokens": 10}, None, 1) == 10


def test_quota_windows_are_utc_calendar_day_and_month() -> None:
    now = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    windows = Windows().current(now)
    assert windows["quota_day"] == (
        "20261231",
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000),
    )
    assert windows["quota_month"] == (
        "202612",
        int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000),
    )


async def test_embedded_keys_expire_when_their_time_is_up() -> None:
    store = Embedded()
    script = "redis.call('SET', KEYS[1], '1') return redis.call('PEXPIRE', KEYS[1], ARGV[1])"
    sha = await store.call("SCRIPT", "LOAD", script)
    now = int(time.time() * 1000)
    await store.call("EVALSHA", sha, 1, "short", 1_000)
    await store.call("EVALSHA", sha, 1, "long", 60_000)
    assert store.size(now + 2_000) == 1
    assert store.size(now + 120_000) == 0


async def test_embedded_store_answers_like_redis() -> None:
    store = Embedded()
    with pytest.raises(ReplyError, match=r"^NOSCRIPT"):
        await store.call("EVALSHA", "0" * 40, 0)
    sha = await store.call("SCRIPT", "LOAD", "return redis.call('HGET', KEYS[1], 'f')")
    with pytest.raises(ReplyError, match=r"^ERR the embedded store does not offer HGET$"):
        await store.call("EVALSHA", sha, 1, "k")
    incr = await store.call("SCRIPT", "LOAD", "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await store.call("EVALSHA", incr, 1, "n", 5) == 5
    hmget = await store.call("SCRIPT", "LOAD", "return redis.call('HMGET', KEYS[1], 'v')")
    with pytest.raises(ReplyError, match=r"^WRONGTYPE"):
        await store.call("EVALSHA", hmget, 1, "n")


def nested(depth: int) -> bytes:
    """A JSON text inside `depth` arrays: as deep as the JSON parser allows (1,024)."""
    return b"[" * depth + b'"abcd"' + b"]" * depth


@pytest.mark.parametrize(
    ("endpoint", "field"), [("chat.completions", "messages"), ("completions", "prompt")]
)
def test_prompt_estimate_of_a_deeply_nested_body_needs_no_recursion(
    endpoint: str, field: str
) -> None:
    value = orjson.loads(nested(1_020))
    body = {field: [{"content": value}] if field == "messages" else value}
    assert prompt_tokens(endpoint, body) == (4 + (16 if field == "messages" else 0)) // 4 + 1
    assert prompt_tokens("embeddings", {"input": value}) == 2
