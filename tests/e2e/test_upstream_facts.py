"""What a real llama-server promises a store of its answers (docs/policies/cache.md).

The module runs llama-servers of its own, so nothing else shares their slots: two chat
servers started alike (replicas), one serving the same weights from another file name, one
with another context size, and an embeddings server. Only what held in every measurement is
pinned here: an identity that holds while a server runs and differs with the model file or
the context; one answer to a request sent alone per state of the prompt cache (the whole
prompt evaluated, or a cached prefix reused), the same from either replica. Answers to
requests batched with others, or across prompt cache states, may differ, so none is compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.identity import MODELS_PATH, PROPS_PATH, upstream_identity
from gateway.local import CHAT_MODEL, EMBED_MODEL, free_port, model_file, server_args
from gateway.probe import probe
from gateway.upstreams import HEALTHY, Upstream
from tests.support.llama import llama_servers_or_fail, require_llama_server

pytestmark = pytest.mark.e2e

REPLICAS = ("a", "b")
MAX_TOKENS = 24
CHAT = {"messages": [{"role": "user", "content": "List the planets of the solar system."}]}
COMPLETION = {"prompt": "The history of the printing press begins in"}
SAMPLING = {"greedy": {"temperature": 0}, "seeded": {"temperature": 0.8, "seed": 1234}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """{name: URL}: replicas a and b, `moved` (the model file under another name), `ctx`
    (another `-c`) and `embed`."""
    require_llama_server()
    root = tmp_path_factory.mktemp("upstream-facts")
    model = model_file()
    moved = root / "another-name.gguf"
    moved.symlink_to(model)
    variants: dict[str, tuple[Path, list[str], bool]] = {
        "a": (model, [], False),
        "b": (model, [], False),
        "moved": (moved, [], False),
        "ctx": (model, ["-c", "2048"], False),  # the last -c given counts
        "embed": (model, [], True),
    }
    commands = {}
    for name, (path, extra, embeddings) in variants.items():
        port = free_port()
        alias = EMBED_MODEL if embeddings else CHAT_MODEL
        command = [*server_args(path, port, embeddings=embeddings, alias=alias), *extra]
        commands[name] = (f"http://127.0.0.1:{port}", command)
    with llama_servers_or_fail(commands, root) as urls:
        yield urls


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def identity_of(session: aiohttp.ClientSession, url: str) -> str:
    """Read as the gateway's prober reads it."""
    upstream = Upstream(url, CHAT_MODEL)
    await probe(session, upstream, probe_timeout=10)
    assert upstream.state == HEALTHY
    assert upstream.identity is not None
    return upstream.identity


async def test_the_identity_holds_while_a_server_runs_and_answers(
    servers: dict[str, str],
) -> None:
    url = servers["moved"]  # replicas a and b answer nothing but the same requests
    async with aiohttp.ClientSession() as session:
        idle = await identity_of(session, url)
        varied = [
            {**CHAT, "max_tokens": 8, "temperature": 0.1 * i, "seed": i, "top_k": 5 + i}
            for i in range(6)
        ]
        answering = [post_json(session, url + "/v1/chat/completions", body) for body in varied]
        *_, busy = await asyncio.gather(*answering, identity_of(session, url))
        after = await identity_of(session, url)
        models = await get_json(session, url + MODELS_PATH)
    assert idle == busy == after
    # What the identity leaves out for that reason: /v1/models' `created` is the time of the read.
    assert "created" in models["data"][0]


async def test_replicas_started_alike_share_one_identity(servers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        assert await identity_of(session, servers["a"]) == await identity_of(session, servers["b"])


@pytest.mark.parametrize("variant", ["moved", "ctx"])
async def test_another_model_file_or_context_is_another_identity(
    servers: dict[str, str], variant: str
) -> None:
    """The same weights under another file name count as another model: the identity sees
    the path, not the bytes (a file replaced in place keeps it, docs/policies/cache.md)."""
    async with aiohttp.ClientSession() as session:
        served = await identity_of(session, servers["a"])
        other = await identity_of(session, servers[variant])
        props = await get_json(session, servers[variant] + PROPS_PATH)
        models = await get_json(session, servers[variant] + MODELS_PATH)
    assert other != served
    assert other == upstream_identity(props, models)


async def answers(url: str, path: str, body: dict[str, Any]) -> list[tuple[int, str]]:
    """(prompt tokens taken from the prompt cache, text) of four answers to `body`, each
    request sent alone: two evaluating the whole prompt, two reusing the cached prefix."""
    texts = []
    async with aiohttp.ClientSession() as session:
        for cache_prompt in (False, False, True, True):
            answer = await post_json(session, url + path, {**body, "cache_prompt": cache_prompt})
            choice = answer["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            texts.append((answer["timings"]["cache_n"], text))
    return texts


@pytest.mark.parametrize(
    ("path", "prompt", "sampling"),
    [
        ("/v1/chat/completions", CHAT, "greedy"),
        ("/v1/chat/completions", CHAT, "seeded"),
        ("/v1/completions", COMPLETION, "greedy"),
    ],
    ids=["chat-greedy", "chat-seeded", "completions-greedy"],
)
async def test_a_request_sent_alone_gets_one_answer_per_prompt_cache_state_on_every_replica(
    servers: dict[str, str], path: str, prompt: dict[str, Any], sampling: str
) -> None:
    """The answer with a cached prefix may differ from the one evaluating the whole prompt
    (it did for this chat prompt: the prompt is evaluated in other batches), so each state
    is compared with itself only."""
    body = {**prompt, **SAMPLING[sampling], "max_tokens": MAX_TOKENS}
    replicas = [await answers(servers[name], path, body) for name in REPLICAS]
    whole, whole_again, reused, reused_again = replicas[0]
    assert whole[0] == whole_again[0] == 0
    assert reused[0] > 0
    assert reused_again[0] == reused[0]
    assert whole[1]
    assert whole_again[1] == whole[1]
    assert reused_again[1] == reused[1]
    assert replicas[1] == replicas[0]


async def test_an_input_embedded_alone_gets_the_same_vector_every_time(
    servers: dict[str, str],
) -> None:
    body = {"input": "The quick brown fox jumps over the lazy dog near the riverbank."}
    async with aiohttp.ClientSession() as session:
        vectors = [
            (await post_json(session, servers["embed"] + "/v1/embeddings", body))["data"][0]
            for _ in range(3)
        ]
    assert all(v["embedding"] == vectors[0]["embedding"] for v in vectors)  # bit for bit
