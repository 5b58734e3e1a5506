"""Values under the cache's keys in Redis are open to other writers: whatever is there, a
request is answered, never with a 500."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest
import redis

from policies.cache.entry import FORMAT, answer_of, decode
from policies.cache.replay import replay
from tests.support.caches import CHAT0, ask, cache_gateway, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import SHARED_REDIS, STORAGE

ANSWER = (
    b'{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}'
)


def forged(stored_at: float) -> bytes:
    raw = struct.pack("!dI", stored_at, 4) + b"null" + ANSWER
    return FORMAT + zlib.compress(raw)


@pytest.mark.parametrize("stored_at", [float("inf"), float("-inf"), float("nan")])
def test_a_stored_time_that_is_no_time_is_no_entry(stored_at: float) -> None:
    entry = decode(forged(stored_at))
    assert entry is None or entry.age() >= 0


@pytest.mark.parametrize("stored_at", [float("inf"), float("nan")])
async def test_a_forged_stored_time_is_never_a_500(
    make_gateway: GatewayFactory, fake: FakeLlama, prefix: str, stored_at: float
) -> None:
    client = await cache_gateway(make_gateway, sections={"storage": STORAGE}, key_prefix=prefix)
    await ask(client, CHAT0)
    await stored(client)
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        [name] = list(store.scan_iter(match=f"{prefix}:*"))
        store.set(name, forged(stored_at))
    finally:
        store.close()
    resp = await client.post("/v1/chat/completions", json=CHAT0)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("reason", [[], {}, ["stop"]])
def test_a_finish_reason_that_is_no_string_is_no_answer(reason: object) -> None:
    # Reached by a stored value replayed to a streaming client, and by an upstream's answer.
    body = orjson.dumps({"choices": [{"index": 0, "text": "x", "finish_reason": reason}]})
    assert answer_of("completions", body) is None
    assert replay("completions", body, wants_usage=False) is None


def test_a_value_that_inflates_past_any_stored_answer_is_refused() -> None:
    # 80 MiB of zeros compress to about 80 KB: more than any entry the cache writes.
    bomb = FORMAT + zlib.compress(b"\0" * (80 * 1024 * 1024), 9)
    assert len(bomb) < 200_000
    assert decode(bomb) is None
