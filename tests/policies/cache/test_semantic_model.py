"""The semantic index with a real embedding llama-server (`llama-gateway local`'s settings).

With the small Gemma model no threshold below 1 keeps every hard negative of
bench/semantic_pairs.jsonl out (docs/benchmarks.md), so the default serves a prompt asked
again and nothing merely similar; a lower threshold does serve a paraphrase.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.local import free_port, model_file, server_args
from gateway.probe import probe
from policies.cache.semantic import SemanticIndex, SemanticSettings
from tests.support.llama import llama_servers_or_fail, require_llama_server
from tests.support.semantic import EMBED, semantic_env

pytestmark = pytest.mark.e2e
PAIRS = Path(__file__).parents[3] / "bench" / "semantic_pairs.jsonl"
QUESTION = "What is the capital of France?"
PARAPHRASE = "Which city is the capital of France?"


def hardest_negative() -> tuple[str, str]:
    """The long prompt with one number changed: the negative this model scores highest."""
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    numbers = [p for p in pairs if p["kind"] == "number" and not p["same"]]
    longest = max(numbers, key=lambda p: len(p["a"]))
    return longest["a"], longest["b"]


@pytest.fixture(scope="module")
def embedding_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_llama_server()
    port = free_port()
    command = server_args(model_file(), port, embeddings=True, alias=EMBED)
    servers = {EMBED: (f"http://127.0.0.1:{port}", command)}
    with llama_servers_or_fail(servers, tmp_path_factory.mktemp("embed")) as urls:
        yield urls[EMBED]


async def start(url: str, **changes: float) -> SemanticIndex:
    env = semantic_env(url)
    async with aiohttp.ClientSession() as session:
        for upstream in env.upstreams.upstreams:
            upstream.identity = None
            await probe(session, upstream, 10.0)  # what serves it: the vectors' space
            assert upstream.identity is not None
    index = SemanticIndex(
        SemanticSettings(model=EMBED, timeout_seconds=30, **changes), env, None, "e2e"
    )
    await index.start()
    return index


@pytest.fixture
async def default(embedding_url: str) -> AsyncIterator[SemanticIndex]:
    index = await start(embedding_url)
    yield index
    await index.close()


async def stored(index: SemanticIndex, text: str, key: str) -> None:
    vector = await index.embed(text)
    assert vector is not None
    await index.add("partition", vector, key)


async def looked_up(index: SemanticIndex, text: str) -> tuple[str, float] | None:
    vector = await index.embed(text)
    assert vector is not None
    return await index.nearest("partition", vector)


async def test_a_prompt_asked_again_hits_at_the_default(default: SemanticIndex) -> None:
    await stored(default, QUESTION, "france")
    found = await looked_up(default, QUESTION)
    assert found is not None
    assert found[0] == "france"


async def test_the_hardest_negative_misses_at_the_default(default: SemanticIndex) -> None:
    first, changed = hardest_negative()
    await stored(default, first, "first")
    assert await looked_up(default, changed) is None


async def test_a_paraphrase_misses_at_the_default(default: SemanticIndex) -> None:
    await stored(default, QUESTION, "france")
    assert await looked_up(default, PARAPHRASE) is None


async def test_a_paraphrase_hits_at_a_lower_threshold(embedding_url: str) -> None:
    index = await start(embedding_url, threshold=0.85)
    try:
        await stored(index, QUESTION, "france")
        found = await looked_up(index, PARAPHRASE)
        assert found is not None
        assert found[0] == "france"
    finally:
        await index.close()
