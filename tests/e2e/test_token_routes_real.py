"""Tokenize, detokenize and rerank through the gateway to a real llama-server."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from gateway.local import CHAT_MODEL

pytestmark = pytest.mark.e2e

TEXT = "The capital of France is Paris."


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url + path, json=body) as resp:
        return resp.status, await resp.json()


async def test_tokenize_answers_what_the_upstream_does(gateway_url: str, chat_url: str) -> None:
    status, through = await post(
        gateway_url, "/v1/tokenize", {"model": CHAT_MODEL, "content": TEXT}
    )
    assert status == 200
    _, direct = await post(chat_url, "/tokenize", {"content": TEXT})
    assert through == direct
    assert len(through["tokens"]) > 3


async def test_detokenize_gives_back_the_text(gateway_url: str) -> None:
    body = {"model": CHAT_MODEL, "content": TEXT, "with_pieces": True}
    _, tokens = await post(gateway_url, "/v1/tokenize", body)
    assert "".join(t["piece"] for t in tokens["tokens"]) == TEXT
    ids = [t["id"] for t in tokens["tokens"]]
    status, text = await post(gateway_url, "/v1/detokenize", {"model": CHAT_MODEL, "tokens": ids})
    assert status == 200
    assert text == {"content": TEXT}


async def test_a_token_id_past_the_vocabulary_is_a_400_before_llama_server_fails(
    gateway_url: str, chat_url: str
) -> None:
    async with aiohttp.ClientSession() as session, session.get(chat_url + "/v1/models") as resp:
        vocab = (await resp.json())["data"][0]["meta"]["n_vocab"]
    status, _ = await post(chat_url, "/detokenize", {"tokens": [vocab]})
    assert status == 500  # what the gateway keeps from reaching llama-server
    body = {"model": CHAT_MODEL, "tokens": [1, vocab]}
    status, error = await post(gateway_url, "/v1/detokenize", body)
    assert status == 400
    assert error["error"]["code"] == "invalid_token_id"
    body["tokens"] = [vocab - 1]
    assert (await post(gateway_url, "/v1/detokenize", body))[0] == 200


async def test_rerank_on_a_server_without_reranking_is_its_501_and_chat_still_works(
    gateway_url: str, client: openai.OpenAI
) -> None:
    body = {"model": CHAT_MODEL, "query": "capital", "documents": ["Paris", "a cat"]}
    for _ in range(6):  # more than the breaker's failures
        status, error = await post(gateway_url, "/v1/rerank", body)
        assert status == 501
        assert error["error"]["type"] == "not_supported_error"
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None


def test_the_python_sdk_retrieves_a_model(client: openai.OpenAI) -> None:
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
