"""The response cache in front of a real llama-server, through the OpenAI SDK, on the real
Redis: a streamed miss is served again as JSON and as a stream, with the same words and
usage; an embedding comes back bit for bit; a sampled request is never served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.local import CHAT_MODEL, EMBED_MODEL
from tests.support.processes import configured_client
from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix

pytestmark = pytest.mark.e2e

# A question nobody else in the suite asks: its first answer is a miss.
WORDS = "Describe a lighthouse keeper named Oswin in one sentence."


@pytest.fixture
def cached_client(llama_urls: dict[str, str], tmp_path: Path) -> Iterator[openai.OpenAI]:
    prefix = unique_prefix()
    config = {
        "models": {name: {"upstreams": [url]} for name, url in llama_urls.items()},
        "upstream": {"health_interval_seconds": 0.2},
        "storage": {"redis_url": SHARED_REDIS, "redis_timeout_seconds": 2},
        "policies": [{"type": "request_id"}, {"type": "cache", "key_prefix": prefix}],
    }
    try:
        with configured_client(config, tmp_path) as client:
            _until_identified(client)
            yield client
    finally:
        drop_keys(SHARED_REDIS, prefix)


def _until_identified(client: openai.OpenAI) -> None:
    """The cache bypasses until the prober has read what serves each model."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = client.embeddings.with_raw_response.create(model=EMBED_MODEL, input="warm-up")
        if raw.headers["x-cache"] != "BYPASS":
            return
        time.sleep(0.2)
    pytest.fail("the cache never learnt what serves the embedding model")


def _streamed(client: openai.OpenAI, **request: Any) -> tuple[str, str, Any]:
    """(X-Cache, the assembled text, the usage chunk's usage) of a streamed chat."""
    with client.chat.completions.with_streaming_response.create(stream=True, **request) as resp:
        cache = resp.headers["x-cache"]
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    return cache, text, usage[-1] if usage else None


def _eventually_hit(call: Any) -> Any:
    """Storing is completion work, done just after the answer: retry a moment for the hit."""
    for _ in range(50):
        result = call()
        if result[0] == "HIT":
            return result
        time.sleep(0.1)
    pytest.fail("the stored answer was never served")


def test_a_streamed_answer_is_served_again_as_json_and_as_a_stream(
    cached_client: openai.OpenAI,
) -> None:
    request: dict[str, Any] = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": WORDS}],
        "temperature": 0,
        "max_tokens": 24,
    }
    options = {"stream_options": {"include_usage": True}}
    miss, text, usage = _streamed(cached_client, **request, **options)
    assert miss == "MISS"
    assert text.strip()
    # The question reached the model: its prompt holds at least a token per word of it.
    assert usage is not None
    assert usage.prompt_tokens > len(WORDS.split())

    def plain() -> tuple[str, Any]:
        raw = cached_client.chat.completions.with_raw_response.create(**request)
        return raw.headers["x-cache"], raw

    _, raw = _eventually_hit(plain)
    answer = raw.parse()
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    again, replayed, replayed_usage = _streamed(cached_client, **request, **options)
    assert (again, replayed) == ("HIT", text)
    assert replayed_usage is not None
    assert replayed_usage.total_tokens == usage.total_tokens
    assert _streamed(cached_client, **request)[2] is None  # no usage chunk unless asked


def test_an_embedding_is_served_again_bit_for_bit_and_sampling_is_never_served(
    cached_client: openai.OpenAI,
) -> None:
    inputs = ["the tide comes in", WORDS]
    first = cached_client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
    assert first.headers["x-cache"] == "MISS"

    def again() -> tuple[str, Any]:
        raw = cached_client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
        return raw.headers["x-cache"], raw

    _, hit = _eventually_hit(again)
    assert [d.embedding for d in hit.parse().data] == [d.embedding for d in first.parse().data]
    sampled = cached_client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": WORDS}],
        temperature=0.9,
        max_tokens=4,
    )
    assert sampled.headers["x-cache"] == "BYPASS"
