"""Usage rows against a real llama-server: the tokens recorded are the ones the SDK saw."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.local import CHAT_MODEL, EMBED_MODEL
from tests.support.processes import configured_gateway
from tests.support.usage import pg_rows, usage_settings, wait_for_rows

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture
def usage_gateway_url(llama_urls: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[str]:
    """A gateway subprocess with the usage policy writing to PostgreSQL."""
    config = {
        "models": {name: {"upstreams": [url]} for name, url in llama_urls.items()},
        "storage": {"database_url": pg_url, "data_dir": str(tmp_path / "data")},
        "policies": [{"type": "request_id"}, usage_settings()],
    }
    with configured_gateway(config, tmp_path) as gateway:
        yield gateway.url


async def test_usage_rows_hold_the_tokens_the_sdk_reported(
    usage_gateway_url: str, pg_url: str
) -> None:
    reported: dict[str, tuple[int, int]] = {}
    with openai.OpenAI(
        base_url=usage_gateway_url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        rid = f"plain-{uuid.uuid4().hex}"
        completion = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            extra_headers={"X-Request-ID": rid},
        )
        assert completion.usage is not None
        reported[rid] = (completion.usage.prompt_tokens, completion.usage.completion_tokens)

        rid = f"stream-{uuid.uuid4().hex}"
        with client.chat.completions.create(
            model=CHAT_MODEL,
            messages=MESSAGES,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Request-ID": rid},
        ) as stream:
            chunks = list(stream)
        usage = next(c.usage for c in chunks if c.usage is not None)
        reported[rid] = (usage.prompt_tokens, usage.completion_tokens)

        rid = f"embed-{uuid.uuid4().hex}"
        vectors = client.embeddings.create(
            model=EMBED_MODEL, input=["one", "two"], extra_headers={"X-Request-ID": rid}
        )
        reported[rid] = (vectors.usage.prompt_tokens, 0)

    rows = {r["request_id"]: r for r in await wait_for_rows(pg_url, len(reported))}
    assert {rid: (rows[rid]["prompt_tokens"], rows[rid]["completion_tokens"]) for rid in rows} == (
        reported
    )
    assert all(t[0] > 0 for t in reported.values())
    assert len(await pg_rows(pg_url)) == 3
    assert all(r["ttft_ms"] is not None and r["status"] == 200 for r in rows.values())
