"""Rerank, tokenize and detokenize, relayed to the fake llama-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from gateway.circuit import CLOSED
from tests.support.auth import STATIC, sha256
from tests.support.fake_llama import FakeLlama
from tests.support.fake_tokens import VOCAB
from tests.support.gateways import GatewayFactory
from tests.support.waiting import eventually

RERANK = {"model": "fake", "query": "red apple", "documents": ["a blue sky", "a red apple"]}


async def upstream_read_vocab(client: TestClient[Any, Any]) -> None:
    (upstream,) = client.app[STATE].pool.upstreams
    await eventually(lambda: upstream.vocab == VOCAB)


async def test_rerank_is_relayed_to_the_upstreams_rerank_route(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/rerank", json={**RERANK, "top_n": 1})
    assert resp.status == 200
    body = await resp.json()
    assert [r["index"] for r in body["results"]] == [1]
    assert body["results"][0]["relevance_score"] > 0
    assert fake.received[-1][0] == "/v1/rerank"
    assert fake.requests[-1] == {**RERANK, "top_n": 1}


@pytest.mark.parametrize("top_n", [-1, 0, 2**31, "3", 1.5])
async def test_a_top_n_llama_server_cannot_use_is_a_400_that_stays_here(
    gateway: TestClient[Any, Any], fake: FakeLlama, top_n: Any
) -> None:
    resp = await gateway.post("/v1/rerank", json={**RERANK, "top_n": top_n})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "top_n"
    assert fake.requests == []


async def test_rerank_without_documents_is_a_400(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/rerank", json={"model": "fake", "query": "q"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "documents"


async def test_a_server_without_reranking_answers_501_and_stays_in_rotation(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    fake.reranking = False
    client = await make_gateway(upstream={"breaker": {"failures": 1}, "retry": {"attempts": 3}})
    for _ in range(3):
        resp = await client.post("/v1/rerank", json=RERANK)
        assert resp.status == 501
        assert (await resp.json())["error"]["type"] == "not_supported_error"
    assert len(fake.requests) == 3  # once each: not retried elsewhere
    (upstream,) = client.app[STATE].pool.upstreams
    assert upstream.circuit.state == CLOSED
    resp = await client.post("/v1/tokenize", json={"model": "fake", "content": "hi"})
    assert resp.status == 200


async def test_tokenize_and_detokenize_go_to_llama_servers_routes_and_back(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/tokenize", json={"model": "fake", "content": "Hello"})
    assert resp.status == 200
    tokens = (await resp.json())["tokens"]
    assert tokens == [ord(c) for c in "Hello"]
    resp = await gateway.post("/v1/detokenize", json={"model": "fake", "tokens": tokens})
    assert (await resp.json())["content"] == "Hello"
    assert [path for path, _ in fake.received] == ["/tokenize", "/detokenize"]


async def test_tokenize_needs_a_model_when_several_are_configured(
    make_gateway: GatewayFactory, fake_url: str, fake: FakeLlama
) -> None:
    client = await make_gateway(models={"other": {"upstreams": [fake_url]}})
    resp = await client.post("/v1/tokenize", json={"content": "Hello"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "model"
    resp = await client.post("/v1/tokenize", json={"model": "other", "content": "Hello"})
    assert resp.status == 200
    assert fake.requests == [{"model": "other", "content": "Hello"}]


@pytest.mark.parametrize(
    "body",
    [
        {"tokens": [72, VOCAB]},
        {"tokens": [-1]},
        {"tokens": [2**40]},
        {"tokens": [1.5]},
        {"tokens": [True]},
        {"tokens": [[72]]},
    ],
)
async def test_detokenize_refuses_ids_outside_the_vocabulary_before_the_upstream_fails(
    gateway: TestClient[Any, Any], fake: FakeLlama, body: dict[str, Any]
) -> None:
    await upstream_read_vocab(gateway)
    resp = await gateway.post("/v1/detokenize", json={"model": "fake", **body})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "tokens"
    assert fake.requests == []


async def test_tokenizes_mixed_content_ids_are_checked_against_the_vocabulary(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    await upstream_read_vocab(gateway)
    body = {"model": "fake", "content": ["Hi", VOCAB], "with_pieces": True}
    resp = await gateway.post("/v1/tokenize", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_token_id"
    resp = await gateway.post("/v1/tokenize", json={**body, "content": ["Hi", VOCAB - 1]})
    assert resp.status == 200
    assert fake.requests[-1]["content"] == ["Hi", VOCAB - 1]


async def test_a_tier_with_tokenize_may_detokenize_and_nothing_else(
    make_gateway: GatewayFactory, fake: FakeLlama, tmp_path: Path
) -> None:
    key = {"hash": sha256(STATIC), "owner": "o", "tier": "counting"}
    client = await make_gateway(
        storage={"data_dir": str(tmp_path)},
        tiers={"counting": {"endpoints": ["tokenize"]}},
        policies=[{"type": "auth", "api_keys": False, "static_keys": [key]}],
    )
    headers = {"Authorization": f"Bearer {STATIC}"}
    for path, body in [("/v1/tokenize", {"content": "a"}), ("/v1/detokenize", {"tokens": [97]})]:
        resp = await client.post(path, json={"model": "fake", **body}, headers=headers)
        assert resp.status == 200, path
    resp = await client.post("/v1/rerank", json=RERANK, headers=headers)
    assert resp.status == 403
    assert len(fake.requests) == 2
