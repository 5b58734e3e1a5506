"""Helpers of the response cache's tests: policies, deterministic requests, gateways that
know what serves their model, and a look at the cache's metrics."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway import sse
from gateway.app import STATE
from tests.support.gateways import GatewayFactory
from tests.support.waiting import eventually

# Deterministic: temperature explicitly 0.
CHAT0 = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
STREAM0 = {**CHAT0, "stream": True}
EMBED = {"model": "fake", "input": ["a", "b"]}
COMPLETION0 = {"model": "fake", "prompt": "Once", "temperature": 0}


def cache_policy(**settings: Any) -> dict[str, Any]:
    return {"type": "cache", **settings}


async def cache_gateway(
    make_gateway: GatewayFactory,
    *before: dict[str, Any],
    sections: dict[str, Any] | None = None,
    **settings: Any,
) -> TestClient[Any, Any]:
    """A gateway whose chain is `before`, then the cache with `settings`, once it knows
    what serves its model."""
    client = await make_gateway(**(sections or {}), policies=[*before, cache_policy(**settings)])
    await known_identity(client)
    return client


def unique_cache_prefix() -> str:
    return f"test:cache:{uuid.uuid4().hex[:12]}"


async def known_identity(client: TestClient[Any, Any], model: str = "fake") -> str:
    """Wait until a probe has read what serves `model` (the cache bypasses until then)."""
    pool = client.app[STATE].pool
    await eventually(lambda: pool.identity(model) is not None)
    identity = pool.identity(model)
    assert identity is not None
    return identity


def cache_count(
    client: TestClient[Any, Any], result: str, endpoint: str = "chat.completions"
) -> float:
    registry = client.app[STATE].runtime.metrics.registry
    value = registry.get_sample_value(
        "llama_gateway_cache_requests_total", {"endpoint": endpoint, "result": result}
    )
    return value or 0.0


def sample(client: TestClient[Any, Any], name: str, **labels: str) -> float:
    registry = client.app[STATE].runtime.metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


async def ask(
    client: TestClient[Any, Any],
    body: dict[str, Any],
    path: str = "/v1/chat/completions",
    **headers: str,
) -> tuple[str, bytes]:
    """(X-Cache, body) of one request answered 200."""
    resp = await client.post(path, json=body, headers=headers)
    data = await resp.read()
    assert resp.status == 200, data
    return resp.headers["X-Cache"], data


def content(answer: bytes) -> str:
    """The text of a JSON answer or of an SSE stream (chat or completions)."""
    if not answer.startswith(b"data:"):
        choice = orjson.loads(answer)["choices"][0]
        return str(choice["message"]["content"] if "message" in choice else choice["text"])
    parts = []
    for event in sse.events(answer):
        value = sse.event_json(event)
        for choice in (value or {}).get("choices", []):
            piece = (
                choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
            )
            parts.append(piece or "")
    return "".join(parts)


async def stored(client: TestClient[Any, Any], count: int = 1) -> None:
    """Wait until `count` answers were stored (storing is completion work, after the answer)."""
    await eventually(lambda: sample(client, "llama_gateway_cache_stored_entries_total") >= count)
