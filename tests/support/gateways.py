"""Gateways in the test's own loop: their configuration, and what a test sends them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.config import GatewayConfig, parse_config
from gateway.policy import PolicyEnv
from gateway.resources import Resources

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}

GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def gateway_config(upstream_url: str, **sections: Any) -> GatewayConfig:
    raw: dict[str, Any] = {
        "models": {"fake": {"upstreams": [upstream_url]}},
        "upstream": {"health_interval_seconds": 0.05, "first_byte_timeout": 5, "idle_timeout": 5},
        "logging": {"level": "DEBUG"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw)


PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


ENV = PolicyEnv(gateway_config("http://127.0.0.1:9"), {}, Resources())
