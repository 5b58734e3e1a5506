"""Embedding for the semantic cache: a vector, or none (counted) whatever the upstream does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from gateway.policy import PolicyEnv
from gateway.upstreams import DOWN
from policies.cache.semantic import SemanticIndex
from tests.support.semantic import SPACE, sample, semantic_env, semantic_settings

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Embeddings:
    """An embeddings endpoint whose answer each test chooses; it records what it was sent."""

    def __init__(self) -> None:
        self.answer: Answer = self.vector
        self.seen: list[tuple[dict[str, Any], str | None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((await request.json(), request.headers.get("Authorization")))
        return await self.answer(request)

    async def vector(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [{"embedding": [3.0, 4.0]}]})


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Embeddings, str]:
    embeddings = Embeddings()
    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings.handle)
    server = await aiohttp_server(app)
    return embeddings, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def index(upstream: tuple[Embeddings, str]) -> AsyncIterator[SemanticIndex]:
    env = semantic_env(upstream[1])
    # A timeout the other tests' answers never meet on a busy machine (at 0.3 s one did,
    # counted as a timeout); the stalled model of the timeout test is given up after it.
    made = SemanticIndex(semantic_settings(timeout_seconds=2.0, max_text_chars=50), env, None, "p")
    await made.start()
    yield made
    await made.close()


def counted(env: PolicyEnv, result: str) -> float:
    return sample(env.metrics, "cache_semantic_embeddings_total", result=result)


async def test_a_vector_comes_back_unit_length_in_the_models_space(
    index: SemanticIndex, upstream: tuple[Embeddings, str]
) -> None:
    vector = await index.embed("What is the capital of France?")
    assert vector is not None
    assert vector.space == SPACE
    assert np.allclose(vector.values, [0.6, 0.8])
    assert upstream[0].seen == [
        ({"model": "embed", "input": "What is the capital of France?"}, None)
    ]
    assert counted(index.env, "ok") == 1
    assert sample(index.env.metrics, "cache_semantic_embed_seconds_count") == 1


async def test_the_upstreams_api_key_is_sent(upstream: tuple[Embeddings, str]) -> None:
    env = semantic_env(upstream[1])
    env.upstreams.by_model["embed"][0].api_key = "secret"
    index = SemanticIndex(semantic_settings(), env, None, "p")
    await index.start()
    assert await index.embed("hello") is not None
    await index.close()
    assert upstream[0].seen[0][1] == "Bearer secret"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'{"data": []}',
        b'{"data": [{"embedding": "text"}]}',
        b'{"data": [{"embedding": [0.0, 0.0]}]}',
        b'{"data": [{"embedding": [1e39, 1.0]}]}',
        b'{"data": [{"embedding": [[1.0], [2.0]]}]}',
        b'{"data": [{"embedding": []}]}',
    ],
)
async def test_a_malformed_answer_gives_no_vector(
    index: SemanticIndex, upstream: tuple[Embeddings, str], body: bytes
) -> None:
    async def malformed(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    upstream[0].answer = malformed
    assert await index.embed("hello") is None
    assert counted(index.env, "failed") == 1
    errors = sample(
        index.env.metrics,
        "dependency_errors_total",
        dependency="embedding_model",
        action="semantic_skipped",
    )
    assert errors == 1


async def test_an_error_status_gives_no_vector(
    index: SemanticIndex, upstream: tuple[Embeddings, str]
) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "no"}}, status=400)

    upstream[0].answer = refuse
    assert await index.embed("hello") is None
    assert counted(index.env, "failed") == 1


async def test_a_slow_model_gives_no_vector_within_the_timeout(
    index: SemanticIndex, upstream: tuple[Embeddings, str]
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        raise AssertionError("the call should have been given up")

    upstream[0].answer = stall
    assert await index.embed("hello") is None
    assert counted(index.env, "timeout") == 1
    assert index.env.upstreams.by_model["embed"][0].in_flight == 0


async def test_no_healthy_upstream_gives_no_vector(index: SemanticIndex) -> None:
    index.env.upstreams.by_model["embed"][0].mark(DOWN, "test")
    assert await index.embed("hello") is None
    assert counted(index.env, "failed") == 1


async def test_an_unreachable_upstream_gives_no_vector() -> None:
    index = SemanticIndex(semantic_settings(), semantic_env("http://127.0.0.1:9"), None, "p")
    await index.start()
    assert await index.embed("hello") is None
    await index.close()
    assert counted(index.env, "failed") == 1


async def test_a_long_text_is_not_embedded(
    index: SemanticIndex, upstream: tuple[Embeddings, str]
) -> None:
    assert await index.embed("x" * 51) is None
    assert upstream[0].seen == []
    assert counted(index.env, "too_long") == 1


async def test_an_unidentified_model_is_not_embedded(
    index: SemanticIndex, upstream: tuple[Embeddings, str]
) -> None:
    """Until the prober has read what serves the model, its vectors could not be told from
    another model's."""
    index.env.upstreams.by_model["embed"][0].identity = None
    assert await index.embed("hello") is None
    assert upstream[0].seen == []
    assert counted(index.env, "unidentified") == 1
