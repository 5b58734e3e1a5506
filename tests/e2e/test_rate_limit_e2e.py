"""Rate limits in front of a real llama-server, seen through the OpenAI SDK: the
`x-ratelimit-*` headers on answers and streams, and `RateLimitError` over the limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.local import CHAT_MODEL
from tests.support.processes import GATEWAY_START_TIMEOUT, listening_port, log_tail
from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]
REQUESTS_PER_MINUTE = 3


@pytest.fixture
def limited_client(llama_urls: dict[str, str], tmp_path: Path) -> Iterator[openai.OpenAI]:
    """The SDK in front of a gateway subprocess allowing 3 requests a minute, on Redis."""
    prefix = unique_prefix()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
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
        )
    )
    log = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_GATEWAY_CONFIG"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while (port := listening_port(log)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the rate-limited gateway did not start\n{log_tail(log)}")
            time.sleep(0.05)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60
        ) as client:
            yield client
    finally:
        proc.terminate()
        proc.wait(15)
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
