"""Fixtures of the gateway's tests: a gateway on a port of its own, and `serve --workers 2`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.protocol import GatewayRunner
from tests.support.gateways import GatewayFactory, gateway_config
from tests.support.processes import Workers, serving_workers


@pytest.fixture
async def port(fake_url: str) -> AsyncIterator[int]:
    """The port of a gateway served as `serve` serves it, for requests over raw sockets."""
    runner = GatewayRunner(create_app(gateway_config(fake_url)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def every_policy(make_gateway: GatewayFactory, tmp_path: Path) -> TestClient[Any, Any]:
    """A gateway with every policy of the project on: tiers gold and tin (anonymous
    callers), embedded stores."""
    return await make_gateway(
        storage={"data_dir": str(tmp_path / "data")},
        tiers={"gold": {}, "tin": {}},
        policies=[
            {"type": "request_id"},
            {"type": "usage"},
            {"type": "auth", "api_keys": False, "anonymous": {"tier": "tin"}},
            {"type": "rate_limit", "default": {"requests_per_minute": 5}},
            {"type": "cache"},
        ],
    )


@pytest.fixture
async def workers(fake_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    """`serve --workers 2` in front of the fake llama-server."""
    async with serving_workers(fake_url, tmp_path) as running:
        yield running
