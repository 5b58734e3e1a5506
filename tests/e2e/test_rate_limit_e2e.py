"""Rate limits in front of a real llama-server, seen through the OpenAI SDK: the
`x-ratelimit-*` headers on answers and streams, and `RateLimitError` over the limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.local import CHAT_MODEL
from tests.support.processes import configured_client
from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]
REQUESTS_PER_MINUTE = 3


@pytest.fixture
def limited_client(llama_urls: dict[str, str], tmp_path: Path) -> Iterator[openai.OpenAI]:
    """The SDK in front of a gateway subprocess allowing 3 requests a minute, on Redis."""
    prefix = unique_prefix()
    config = {
        "models": {name: {"upstreams": [url]} for name, url in llama_urls.items()},
        "storage": {"redis_url": SHARED_REDIS, "redis_timeout_seconds": 2},
        "policies": [
            {"type": "request_id"},
            {
                "type": "rate_limit",
                "key_prefix": prefix,
                "default": {
                    "requests_per_minute": REQUESTS_PER_MINUTE,
                    "tokens_per_minute": 50_000,
                },
            },
        ],
    }
    try:
        with configured_client(config, tmp_path) as client:
            yield client
    finally:
        drop_keys(SHARED_REDIS, prefix)


def test_sdk_sees_rate_limit_headers_then_a_rate_limit_error(
    limited_client: openai.OpenAI,
) -> None:
    raw = limited_client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert raw.headers["x-ratelimit-limit-requests"] == str(REQUESTS_PER_MINUTE)
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-limit-tokens"] == "50000"
    assert raw.parse().choices[0].message.content

    with limited_client.chat.completions.with_streaming_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=8, stream=True
    ) as stream:
        assert stream.headers["x-ratelimit-remaining-requests"] == "1"
        assert "".join(stream.iter_lines())  # the events arrive

    limited_client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.RateLimitError) as refused:
        limited_client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4)
    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["Retry-After"]) >= 1
