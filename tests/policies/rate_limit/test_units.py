"""The rate-limit policy's pure parts: header formats, key layout, token estimates, windows."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redis_client import ReplyError
from policies.rate_limit.buckets import (
    completion_tokens,
    make_plan,
    prompt_tokens,
    safe_id,
)
from policies.rate_limit.embedded import Embedded
from policies.rate_limit.headers import duration, retry_after
from policies.rate_limit.settings import Limits, TierLimits
from policies.rate_limit.store import ADMIT, SETTLE, TOUCH


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
    # llama-server's prompt objects (multimodal prompts) carry their text in prompt_string.
    assert prompt_tokens("completions", {"prompt": {"prompt_string": "x" * 400}}) == 101
    assert prompt_tokens("embeddings", {"input": [{"prompt_string": "x" * 400}]}) == 101


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


async def quota_resets(at_ms: int) -> tuple[int, int]:
    """The time left in the UTC day and month at `at_ms`, as admit.lua finds it."""
    # Half a millisecond in: the store truncates to the millisecond, and at_ms / 1000 as a
    # float may fall a hair short of it (2038-01-19T03:14:07.123 came out as .122).
    store = Embedded(clock=lambda: (at_ms + 0.5) / 1000)
    sha = await store.call("SCRIPT", "LOAD", ADMIT.text)
    args = ["m1", 1000, "d", 10, 1, 0, "m", 10, 1, 0]
    result = await store.call("EVALSHA", sha, 2, "day", "month", *args)
    assert result[:4] == [1, 0, 0, at_ms]
    return result[5], result[7]


def utc_ms(*date: int) -> int:
    return int(datetime(*date, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "day_end", "month_end"),
    [
        ((2026, 12, 31, 23, 59, 59), (2027, 1, 1), (2027, 1, 1)),
        ((2028, 2, 28, 12), (2028, 2, 29), (2028, 3, 1)),
        ((2100, 2, 28), (2100, 3, 1), (2100, 3, 1)),
        ((2000, 2, 29), (2000, 3, 1), (2000, 3, 1)),
        ((1970, 1, 1), (1970, 1, 2), (1970, 2, 1)),
    ],
)
async def test_quota_windows_are_utc_calendar_day_and_month(
    now: tuple[int, ...], day_end: tuple[int, ...], month_end: tuple[int, ...]
) -> None:
    at = utc_ms(*now)
    assert await quota_resets(at) == (utc_ms(*day_end) - at, utc_ms(*month_end) - at)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.datetimes(datetime(1970, 1, 1), datetime(2400, 12, 31)))
async def test_quota_windows_match_the_calendar_at_any_time(when: datetime) -> None:
    at = int(when.replace(tzinfo=UTC).timestamp() * 1000)
    day = datetime.fromtimestamp(at // 86_400_000 * 86_400, UTC)
    month = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    day_end, month_end = await quota_resets(at)
    assert at + day_end == utc_ms(day.year, day.month, day.day) + 86_400_000
    assert at + month_end == utc_ms(month.year, month.month, 1)


async def test_embedded_keys_expire_when_their_time_is_up() -> None:
    store = Embedded()
    script = "redis.call('HSET', KEYS[1], 'f', 1) return redis.call('PEXPIRE', KEYS[1], ARGV[1])"
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
    zadd = await store.call("SCRIPT", "LOAD", "return redis.call('ZADD', KEYS[1], 1, ARGV[1])")
    assert await store.call("EVALSHA", zadd, 1, "n", "m") == 1
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
    assert prompt_tokens("chat.completions", {"messages": [], "tools": value}) == 2


async def test_settling_a_past_quota_window_leaves_the_new_one_alone() -> None:
    now = [utc_ms(2026, 12, 1, 23, 59, 59) / 1000]
    store = Embedded(clock=lambda: now[0])
    admit = await store.call("SCRIPT", "LOAD", ADMIT.text)
    settle = await store.call("SCRIPT", "LOAD", SETTLE.text)
    first = await store.call("EVALSHA", admit, 1, "q", "m1", 1000, "d", 100, 30, 0)
    window_end = first[3] + first[5]
    assert window_end == utc_ms(2026, 12, 2)
    now[0] += 2  # the next UTC day
    second = await store.call("EVALSHA", admit, 1, "q", "m2", 1000, "d", 100, 40, 0)
    assert second[4] == 60  # the new day counts only this request
    # The first request used 10 of its 30: the past day is gone, the new one untouched.
    await store.call("EVALSHA", settle, 1, "q", "m1", "d", 100, -20, window_end)
    third = await store.call("EVALSHA", admit, 1, "q", "m3", 1000, "d", 100, 1, 0)
    assert third[4] == 59


def test_prompt_estimate_counts_tool_definitions_and_tool_calls() -> None:
    # The chat template writes both into the prompt: they are text like any other.
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "x" * 4000, "parameters": {"type": "object"}},
    }
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "y" * 4000}}
    user = {"role": "user", "content": "hi"}
    with_tools = prompt_tokens("chat.completions", {"messages": [user], "tools": [tool]})
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    with_call = prompt_tokens("chat.completions", {"messages": [user, assistant]})
    assert 1000 <= with_tools <= 1020
    assert 1000 <= with_call <= 1030


@pytest.mark.parametrize("subject", ["{evil}", "a}b{c", "}", "x" * 200, "", "ünï cödé"])
def test_odd_subjects_cannot_break_the_hash_tag_of_per_user_buckets(subject: str) -> None:
    limits = TierLimits(requests_per_minute=1, per_user=Limits(requests_per_minute=2))
    plan = make_plan("p", "free", limits, f"jwt:{subject}", subject)
    keys = [b.key for b in plan.buckets]
    assert all(key.count("{") == key.count("}") == 1 for key in keys)
    assert len(hash_tags(keys)) == 1
    assert all(len(key) < 200 for key in keys)


async def test_touching_a_freed_slot_does_not_take_it_again() -> None:
    store = Embedded()
    admit, settle, touch = [
        await store.call("SCRIPT", "LOAD", script.text) for script in (ADMIT, SETTLE, TOUCH)
    ]
    assert (await store.call("EVALSHA", admit, 1, "c", "m1", 60_000, "c", 1, 1, 0))[0] == 1
    assert await store.call("EVALSHA", touch, 1, "c", "m1", 60_000) == 1
    await store.call("EVALSHA", settle, 1, "c", "m1", "c", 1, 0, 0)
    assert await store.call("EVALSHA", touch, 1, "c", "m1", 60_000) == 0
    assert (await store.call("EVALSHA", admit, 1, "c", "m2", 60_000, "c", 1, 1, 0))[0] == 1
