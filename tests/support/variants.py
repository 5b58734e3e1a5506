"""A gateway with an experiment over two fake llama-servers, and its callers."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.variants import Experiment
from tests.support.auth import sha256

FREE = "free-key-of-the-variant-tests-0123456789"
TESTER = "tester-key-of-the-variant-tests-012345678"
EXPERIMENT = {"experiment": "chat-2026-12", "choices": {"m": 50, "m-q8": 50}}
VARIANTS: dict[str, Any] = {
    "chat": EXPERIMENT,
    # An experiment whose one variant cannot answer: an error after routing.
    "broken": {"experiment": "broken-1", "choices": {"m-dead": 1}},
}
TIERS = {"free": {}, "testers": {"choose_variant": True}}
AUTH = {
    "type": "auth",
    "api_keys": False,
    "static_keys": [
        {"hash": sha256(FREE), "owner": "f", "tier": "free"},
        {"hash": sha256(TESTER), "owner": "t", "tier": "testers"},
    ],
    # Callers without a key are told apart by the address a trusted proxy forwards.
    "anonymous": {"tier": "free", "trusted_proxies": ["127.0.0.1/32"]},
}


def models(urls: list[str]) -> dict[str, Any]:
    return {
        "m": {"upstreams": [urls[0]]},
        "m-q8": {"upstreams": [urls[1]]},
        "m-dead": {"upstreams": ["http://127.0.0.1:9"]},
    }


def assigned(principal: str, experiment: dict[str, Any] = EXPERIMENT) -> str:
    """The variant the gateway must give this caller."""
    return Experiment.model_validate(experiment).assign(principal)


def chat(model: str = "chat", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


async def ask(
    client: TestClient[Any, Any],
    body: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    address: str | None = None,
    variant: str | None = None,
) -> Any:
    """One chat request, by key or as an anonymous caller at `address`."""
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if address is not None:
        headers["X-Forwarded-For"] = address
    if variant is not None:
        headers["X-Model-Variant"] = variant
    resp = await client.post("/v1/chat/completions", json=body or chat(), headers=headers)
    await resp.read()
    return resp
