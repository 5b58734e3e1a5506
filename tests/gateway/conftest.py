"""Fixtures of the gateway's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.protocol import GatewayRunner
from tests.support.gateways import gateway_config


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
