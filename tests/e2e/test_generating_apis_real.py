"""/v1/responses and /v1/messages against a real llama-server, through the official OpenAI
and Anthropic SDKs: the model reads the user's words (the prompt grows with them), both
forms work, and the usage rows hold the tokens the SDKs reported."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.local import CHAT_MODEL
from tests.support.processes import configured_gateway
from tests.support.usage import usage_settings, wait_for_rows

pytestmark = pytest.mark.e2e

SHORT = "The capital of France is"
LONG = "The capital of France is Paris. " * 8 + SHORT


@pytest.fixture
def url(llama_urls: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[str]:
    """A gateway subprocess with the usage policy writing to PostgreSQL."""
    config = {
        "models": {name: {"upstreams": [url]} for name, url in llama_urls.items()},
        "storage": {"database_url": pg_url, "data_dir": str(tmp_path / "data")},
        "policies": [{"type": "request_id"}, usage_settings()],
    }
    with configured_gateway(config, tmp_path) as gateway:
        yield gateway.url


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def anthropic_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=60)


def rid(kind: str) -> dict[str, Any]:
    return {"extra_headers": {"X-Request-ID": f"{kind}-{uuid.uuid4().hex}"}}


async def test_responses_read_the_input_and_usage_rows_hold_the_sdks_numbers(
    url: str, pg_url: str
) -> None:
    reported: dict[str, tuple[int, int]] = {}
    with openai_client(url) as client:
        for words in (SHORT, LONG):
            options = rid("plain")
            answer = client.responses.create(
                model=CHAT_MODEL, input=words, max_output_tokens=4, temperature=0, **options
            )
            assert answer.usage is not None
            assert answer.output_text
            reported[options["extra_headers"]["X-Request-ID"]] = (
                answer.usage.input_tokens,
                answer.usage.output_tokens,
            )
        options = rid("stream")
        with client.responses.create(
            model=CHAT_MODEL, input=LONG, max_output_tokens=4, stream=True, **options
        ) as stream:
            events = list(stream)
        assert events[-1].type == "response.completed"
        usage = events[-1].response.usage  # type: ignore[union-attr]
        assert usage is not None
        reported[options["extra_headers"]["X-Request-ID"]] = (
            usage.input_tokens,
            usage.output_tokens,
        )
    short, long, streamed = reported.values()
    # Every word reached the model: 8 sentences of 7 words or more.
    assert long[0] - short[0] >= 8 * 7
    assert streamed[0] == long[0]
    assert all(0 < tokens[1] <= 4 for tokens in reported.values())
    rows = {r["request_id"]: r for r in await wait_for_rows(pg_url, len(reported))}
    assert {k: (r["prompt_tokens"], r["completion_tokens"]) for k, r in rows.items()} == reported
    assert {r["endpoint"] for r in rows.values()} == {"responses"}


async def test_messages_read_the_input_and_usage_rows_hold_the_sdks_numbers(
    url: str, pg_url: str
) -> None:
    def prompt(usage: Any) -> int:  # Anthropic counts cache reads apart from the input
        return int(usage.input_tokens + (usage.cache_read_input_tokens or 0))

    reported: dict[str, tuple[int, int]] = {}
    with anthropic_client(url) as client:
        for words in (SHORT, LONG):
            options = rid("plain")
            message = client.messages.create(
                model=CHAT_MODEL,
                max_tokens=4,
                messages=[{"role": "user", "content": words}],
                **options,
            )
            assert message.content
            reported[options["extra_headers"]["X-Request-ID"]] = (
                prompt(message.usage),
                message.usage.output_tokens,
            )
        options = rid("stream")
        with client.messages.stream(
            model=CHAT_MODEL, max_tokens=4, messages=[{"role": "user", "content": LONG}], **options
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text
        reported[options["extra_headers"]["X-Request-ID"]] = (
            prompt(final.usage),
            final.usage.output_tokens,
        )
    short, long, streamed = reported.values()
    assert long[0] - short[0] >= 8 * 7
    assert streamed[0] == long[0]
    assert all(0 < tokens[1] <= 4 for tokens in reported.values())
    rows = {r["request_id"]: r for r in await wait_for_rows(pg_url, len(reported))}
    assert {k: (r["prompt_tokens"], r["completion_tokens"]) for k, r in rows.items()} == reported
    assert {r["endpoint"] for r in rows.values()} == {"messages"}


def test_a_stored_response_is_not_found(url: str) -> None:
    with openai_client(url) as client, pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_none")


def test_a_bad_request_is_an_anthropic_bad_request(url: str) -> None:
    with anthropic_client(url) as client, pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(
            model=CHAT_MODEL,
            max_tokens=4,
            messages=[{"role": "user", "content": 5}],  # type: ignore[typeddict-item]
        )
    assert raised.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
