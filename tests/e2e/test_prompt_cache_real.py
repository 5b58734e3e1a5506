"""The prompt cache of a real llama-server: a long prompt sent again is mostly taken from
its KV cache, and the gateway counts, logs and records the tokens it reports as cached."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import sse
from gateway.local import CHAT_MODEL
from tests.support.processes import Gateway, configured_gateway
from tests.support.usage import usage_settings, wait_for_rows

pytestmark = pytest.mark.e2e

# Several hundred tokens, the same every time: the second call finds them in the cache.
LONG = " ".join(
    f"Line {i}: the printing press spread across Europe in the 1450s." for i in range(40)
)
CHAT = {
    "model": CHAT_MODEL,
    "messages": [{"role": "user", "content": LONG}],
    "max_tokens": 4,
    "temperature": 0,
}
COUNTERS = (
    "llama_gateway_upstream_prompt_tokens_total",
    "llama_gateway_prompt_tokens_cached_total",
)


@pytest.fixture
def gateway(llama_urls: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Gateway]:
    config = {
        "models": {name: {"upstreams": [url]} for name, url in llama_urls.items()},
        "storage": {"database_url": pg_url, "data_dir": str(tmp_path / "data")},
        "policies": [{"type": "request_id"}, usage_settings()],
    }
    with configured_gateway(config, tmp_path) as running:
        yield running


async def counters(session: aiohttp.ClientSession, url: str, upstream: str) -> list[float]:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels == {"model": CHAT_MODEL, "upstream": upstream}
    }
    return [found[name] for name in COUNTERS]


async def answer(
    session: aiohttp.ClientSession, url: str, rid: str, stream: bool
) -> dict[str, Any]:
    """The answer's last object carrying usage (a stream's usage event): usage, timings."""
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}} if stream else CHAT
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"X-Request-ID": rid}
    ) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    if not stream:
        parsed: dict[str, Any] = orjson.loads(data)
        return parsed
    events = [sse.event_json(e) for e in sse.events(data)]
    return [e for e in events if e is not None and "usage" in e][-1]


def reported(answer: dict[str, Any]) -> int:
    """The cached count as this build reports it: in both places, the same number."""
    usage, timings = answer["usage"], answer["timings"]
    assert usage["prompt_tokens"] == timings["cache_n"] + timings["prompt_n"]
    cached: int = usage["prompt_tokens_details"]["cached_tokens"]
    assert cached == timings["cache_n"]
    return cached


async def test_a_prompt_sent_again_is_counted_as_cached(
    gateway: Gateway, chat_url: str, pg_url: str
) -> None:
    rids = [f"cache-{i}-{uuid.uuid4().hex}" for i in range(3)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        before = await counters(session, gateway.url, chat_url)
        answers = [
            await answer(session, gateway.url, rid, stream=i == 2) for i, rid in enumerate(rids)
        ]
        after = await counters(session, gateway.url, chat_url)
    cached = [reported(a) for a in answers]
    prompt = [a["usage"]["prompt_tokens"] for a in answers]
    assert min(prompt) > 300
    assert cached[1] > prompt[1] // 2  # the repeats
    assert cached[2] > prompt[2] // 2
    assert after[0] - before[0] == sum(prompt)
    assert after[1] - before[1] == sum(cached)
    rows = {r["request_id"]: r for r in await wait_for_rows(pg_url, 3)}
    assert [rows[rid]["cached_tokens"] for rid in rids] == cached
    assert [rows[rid]["upstream"] for rid in rids] == [chat_url] * 3
