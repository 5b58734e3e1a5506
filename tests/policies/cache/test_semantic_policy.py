"""The cache policy with its `semantic:` block: an exact miss answered with the stored answer
of a similar prompt, only within one partition.

The fake upstream gives every text the same embedding, so any two prompts are "similar":
what keeps them apart here is the partition alone (scope, model, parameters, the rest of
the conversation).
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ConfigError
from tests.support.caches import CHAT0, ask, cache_gateway, known_identity, stored
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import auth, static_keys

EMBED_MODEL = "fake-embed"
OTHER_MODEL = "fake-other"  # another chat model, on the same upstream


def question(text: str, **extra: Any) -> dict[str, Any]:
    return {**CHAT0, "messages": [{"role": "user", "content": text}], **extra}


async def semantic_gateway(
    make_gateway: GatewayFactory, embed_url: str, **semantic: Any
) -> TestClient[Any, Any]:
    keys = {"type": "auth", "api_keys": False, "static_keys": static_keys("free")}
    models = {name: {"upstreams": [embed_url]} for name in (EMBED_MODEL, OTHER_MODEL)}
    sections = {"tiers": {"free": {}}, "models": models}
    client = await cache_gateway(
        make_gateway, keys, sections=sections, semantic={"model": EMBED_MODEL, **semantic}
    )
    await known_identity(client, EMBED_MODEL)
    await known_identity(client, OTHER_MODEL)
    return client


def chats(fake: FakeLlama) -> int:
    return sum(path == "/v1/chat/completions" for path, _ in fake.received)


async def test_a_similar_prompt_gets_the_stored_answer_with_its_similarity(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_url: str
) -> None:
    client = await semantic_gateway(make_gateway, fake_url)
    first, body = await ask(client, question("What is the capital of France?"), **auth("alice-1"))
    await stored(client)
    resp = await client.post(
        "/v1/chat/completions", json=question("Capital of France?"), headers=auth("alice-1")
    )
    assert (first, resp.headers["X-Cache"]) == ("MISS", "HIT")
    assert float(resp.headers["X-Cache-Similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert await resp.read() == body
    assert chats(fake) == 1


@pytest.mark.parametrize(
    "other",
    [
        question("Capital of France?", max_tokens=7),  # another parameter
        {  # another conversation before the same last question
            **CHAT0,
            "messages": [
                {"role": "system", "content": "Answer in German."},
                {"role": "user", "content": "Capital of France?"},
            ],
        },
        question("Capital of France?", model=OTHER_MODEL),  # another model
    ],
    ids=["parameter", "conversation", "model"],
)
async def test_a_similar_prompt_of_another_partition_is_a_miss(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_url: str, other: dict[str, Any]
) -> None:
    client = await semantic_gateway(make_gateway, fake_url)
    await ask(client, question("What is the capital of France?"), **auth("alice-1"))
    await stored(client)
    assert (await ask(client, other, **auth("alice-1")))[0] == "MISS"
    assert chats(fake) == 2


async def test_another_users_similar_prompt_is_a_miss(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_url: str
) -> None:
    client = await semantic_gateway(make_gateway, fake_url)
    await ask(client, question("What is the capital of France?"), **auth("alice-1"))
    await stored(client)
    assert (await ask(client, question("Capital of France?"), **auth("bob-1")))[0] == "MISS"
    assert chats(fake) == 2


async def test_an_embedding_model_that_cannot_answer_leaves_requests_as_misses(
    make_gateway: GatewayFactory, fake: FakeLlama, fake_url: str
) -> None:
    # Nothing listens on port 9: the embedding model has no upstream that answers.
    keys = {"type": "auth", "api_keys": False, "static_keys": static_keys("free")}
    sections = {
        "tiers": {"free": {}},
        "models": {EMBED_MODEL: {"upstreams": ["http://127.0.0.1:9"]}},
    }
    client = await cache_gateway(
        make_gateway, keys, sections=sections, semantic={"model": EMBED_MODEL}
    )
    for text in ("What is the capital of France?", "Capital of France?"):
        assert (await ask(client, question(text), **auth("alice-1")))[0] == "MISS"
    await stored(client, 2)
    assert (await ask(client, question("Capital of France?"), **auth("alice-1")))[0] == "HIT"
    assert chats(fake) == 2


async def test_the_semantic_model_must_be_a_configured_model(
    make_gateway: GatewayFactory,
) -> None:
    with pytest.raises(ConfigError, match=r"semantic\.model: 'nope' is not a model"):
        await cache_gateway(make_gateway, semantic={"model": "nope"})
