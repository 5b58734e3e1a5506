"""Fixtures for the usage tests: a gateway with the usage policy, rows read back directly."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway import registry
from gateway.app import STATE, create_app
from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from policies.usage.policy import UsagePolicy
from policies.usage.writer import UsageWriter
from tests.conftest import gateway_config

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
STATIC_KEY = "static-key-of-the-usage-tests-0123456789"
ADMIN_TOKEN = "admin-token-of-the-usage-tests-0123456789"
PRICES = {"fake": {"prompt_per_million": 1000.0, "completion_per_million": 2000.0}}


def sha256(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def usage_settings(**settings: Any) -> dict[str, Any]:
    return {
        "type": "usage",
        "prices": PRICES,
        "flush_seconds": 0.05,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "write_timeout_seconds": 2,
        "admin": {"key_hashes": [sha256(ADMIN_TOKEN)]},
        **settings,
    }


AUTH = {
    "type": "auth",
    "api_keys": False,
    "static_keys": [{"hash": sha256(STATIC_KEY), "owner": "ops", "tier": "premium"}],
}


class Scripted(Policy):
    """Stands in for a rate limit (429) and a policy answering itself, on request."""

    name = "scripted"

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        action = ctx.request.headers.get("X-Scripted")
        if action == "limit":
            raise GatewayError(429, "Rate limit reached.", code="rate_limit_exceeded")
        if action == "answer":
            ctx.model = "fake"
            ctx.usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
            return Reply(200, b'{"object": "chat.completion", "choices": []}')
        return None


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {**registry.available(), "scripted": Scripted}
    monkeypatch.setattr(registry, "available", lambda: known)


UsageGateway = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def usage_gateway(aiohttp_client: Any, fake_url: str, tmp_path: Path) -> UsageGateway:
    async def make(
        *policies: dict[str, Any], database_url: str | None = None, **sections: Any
    ) -> TestClient[Any, Any]:
        chain = list(policies) or [{"type": "request_id"}, usage_settings()]
        config = gateway_config(
            fake_url,
            storage={"database_url": database_url, "data_dir": str(tmp_path / "data")},
            tiers={"premium": {}},
            policies=chain,
            **sections,
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return make


def writer_of(client: TestClient[Any, Any]) -> UsageWriter:
    for policy in client.app[STATE].runtime.chain.policies:
        if isinstance(policy, UsagePolicy):
            assert policy.writer is not None
            return policy.writer
    raise AssertionError("no usage policy in the chain")


async def pg_rows(pg_url: str) -> list[dict[str, Any]]:
    """Every usage row, in insertion order of their ids; none before the writer migrated."""
    conn = await asyncpg.connect(pg_url)
    try:
        return [dict(r) for r in await conn.fetch("SELECT * FROM usage_records ORDER BY id")]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def eventually(check: Callable[[], Any], seconds: float = 60) -> None:
    """Poll `check()` (awaited when it returns an awaitable) until true; the bound only
    keeps a broken test from hanging, it asserts nothing about speed."""
    for _ in range(int(seconds / 0.02)):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {seconds:g} s")


async def wait_for_rows(pg_url: str, count: int) -> list[dict[str, Any]]:
    """Poll until at least `count` rows are in."""

    async def enough() -> bool:
        return len(await pg_rows(pg_url)) >= count

    await eventually(enough)
    return await pg_rows(pg_url)
