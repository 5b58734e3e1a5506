"""The gateway in front of a real llama-server (Gemma 3 270M), driven by the OpenAI SDK."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.local import CHAT_MODEL, EMBED_MODEL
from tests.support.processes import Gateway, log_tail

pytestmark = pytest.mark.e2e

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in one short sentence."}]
MAX_TOKENS = 12
SLOT_FREE_WITHIN = 10.0  # seconds after the hang-up
LONG_MAX_TOKENS = 400


def access_line(log: Path, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The gateway's access log line for a request (written just after the answer ends)."""
    deadline = time.monotonic() + timeout
    while True:
        for raw in log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                line = orjson.loads(raw)
                if (
                    isinstance(line, dict)
                    and line.get("logger") == "gateway.access"
                    and line.get("request_id") == request_id
                ):
                    return line
        if time.monotonic() > deadline:
            pytest.fail(f"no access log line for {request_id}\n{log_tail(log)}")
        time.sleep(0.05)


def upstream_json(url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return orjson.loads(resp.read())


def test_the_model_reads_the_users_words_in_gemmas_turn_format(
    client: openai.OpenAI, chat_url: str
) -> None:
    words = "The capital of France is Paris, and the capital of Italy is"
    messages = [{"role": "user", "content": words}]
    prompt = upstream_json(chat_url, "/apply-template", {"messages": messages})["prompt"]
    assert prompt == f"<start_of_turn>user\n{words}<end_of_turn>\n<start_of_turn>model\n"
    tokens = upstream_json(chat_url, "/tokenize", {"content": prompt, "add_special": True})
    completion = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, max_tokens=2, temperature=0
    )
    # Exactly the templated prompt reached the model: no word lost, none added.
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(tokens["tokens"])


def test_chat_completion_returns_content_usage_and_echoes_request_id(
    client: openai.OpenAI,
) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        extra_headers={"X-Request-ID": request_id},
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert raw.status_code == 200
    assert raw.headers["X-Request-ID"] == request_id
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0


def test_chat_stream_without_include_usage_has_text_and_no_usage_chunk(
    client: openai.OpenAI,
) -> None:
    with client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, stream=True, max_tokens=MAX_TOKENS, temperature=0
    ) as stream:
        chunks = list(stream)
    assert len(chunks) > 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c for c in chunks if not c.choices] == []  # the usage-only chunk is hidden
    assert [c.usage for c in chunks if c.usage is not None] == []
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=MAX_TOKENS,
        temperature=0,
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].choices == []
    usage = usage_chunks[0].usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_returns_text_and_usage(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=MAX_TOKENS, temperature=0
    )
    assert completion.choices[0].text
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_completion_stream_assembles_text(client: openai.OpenAI) -> None:
    # llama-server puts usage into the finishing chunk of /v1/completions streams whether
    # asked or not (there is no separate usage-only chunk to hide).
    with client.completions.create(
        model=CHAT_MODEL,
        prompt="The capital of France is",
        stream=True,
        max_tokens=MAX_TOKENS,
        temperature=0,
    ) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [c for c in chunks if not c.choices] == []
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_usage_the_client_did_not_ask_for_reaches_the_access_log(
    client: openai.OpenAI, gateway_process: Gateway
) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    with client.chat.completions.create(
        model=CHAT_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Request-ID": request_id},
        max_tokens=MAX_TOKENS,
        temperature=0,
    ) as stream:
        generated = sum(1 for c in stream if c.choices and c.choices[0].delta.content)
    line = access_line(gateway_process.log, request_id)
    assert line["status"] == 200
    assert line["stream"] is True
    assert line["outcome"] == "ok"
    assert line["prompt_tokens"] > 0
    assert line["completion_tokens"] >= generated > 0


def test_embeddings_return_one_vector_per_input(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "goodbye moon"])
    assert [d.index for d in result.data] == [0, 1]
    first, second = (d.embedding for d in result.data)
    assert len(first) > 0
    assert len(first) == len(second)
    assert first != second


def test_models_list_names_both_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == sorted([CHAT_MODEL, EMBED_MODEL])


def test_upstream_400_is_passed_through_as_bad_request(
    client: openai.OpenAI, chat_url: str
) -> None:
    # llama-server accepts n up to its slot count (-np) and refuses more with a 400:
    # {"error":{"code":400,"message":"Field 'n': Value must be between 1 <= value <= 4, ...",
    #  "type":"invalid_request_error"}}
    with urllib.request.urlopen(chat_url + "/slots", timeout=10) as resp:
        too_many = len(orjson.loads(resp.read())) + 1
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, n=too_many, max_tokens=MAX_TOKENS, temperature=0
        )
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body.get("type") == "invalid_request_error"
    assert "Field 'n'" in caught.value.message


def test_unknown_model_raises_not_found_with_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-model", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def processing_slots(session: aiohttp.ClientSession, llama_url: str) -> list[int]:
    async with session.get(llama_url + "/slots") as resp:
        assert resp.status == 200, await resp.text()
        slots = await resp.json()
    return [slot["id"] for slot in slots if slot["is_processing"]]


async def tokens_predicted(session: aiohttp.ClientSession, llama_url: str) -> float:
    """llama-server's counter of generated tokens (a slot adds its tokens when released)."""
    async with session.get(llama_url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total "):
            return float(line.split()[1])
    raise AssertionError(f"no llamacpp:tokens_predicted_total in /metrics:\n{text}")


async def test_client_hang_up_mid_stream_frees_the_upstream_slot(
    gateway_url: str, chat_url: str
) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
        "stream": True,
        "max_tokens": LONG_MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,  # llama-server: keep generating until max_tokens
    }
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        assert await processing_slots(session, chat_url) == []
        predicted_before = await tokens_predicted(session, chat_url)
        resp = await session.post(gateway_url + "/v1/chat/completions", json=body)
        assert resp.status == 200
        events = 0
        while events < 3:
            line = await resp.content.readline()
            assert line, "the stream ended before the hang-up"
            events += line.startswith(b"data: ")
        assert await processing_slots(session, chat_url) != []
        resp.close()  # hang up: drop the connection mid-stream
        hung_up = time.monotonic()
        while busy := await processing_slots(session, chat_url):
            assert time.monotonic() - hung_up < SLOT_FREE_WITHIN, f"slots still busy: {busy}"
            await asyncio.sleep(0.05)
        generated = await tokens_predicted(session, chat_url) - predicted_before
    # The slot was released by the cancellation, not by finishing the generation.
    assert 0 < generated < LONG_MAX_TOKENS
