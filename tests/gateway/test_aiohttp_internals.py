"""The aiohttp internals the gateway relies on, where nothing public does the same: each
must still exist and still be honoured, so an aiohttp upgrade that changes one fails here.

- gateway/relay.py: the client connection's protocol, `read_timeout` and `start_timeout()`,
  to wait `first_byte_timeout` for the head and only `idle_timeout` between reads after it.
- gateway/protocol.py: `RequestHandler.handle_error` and `log_exception` for requests
  aiohttp cannot parse, and the runner's `_make_server`, `Server.__call__` and
  `Server._kwargs` to make connections of that class.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp import client_proto, web_protocol

from gateway import sse
from gateway.app import create_app
from gateway.protocol import GatewayRunner
from tests.support.gateways import GatewayFactory, gateway_config
from tests.support.raw_http import exchange

STREAM = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
UNPARSEABLE = b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Ke\x01y: value\r\n\r\n"


async def test_the_client_protocol_read_timeout_can_be_changed_and_restarted() -> None:
    protocol = client_proto.ResponseHandler(asyncio.get_running_loop())
    protocol.read_timeout = 0.25
    assert protocol.read_timeout == 0.25
    assert callable(protocol.start_timeout)


async def test_an_upstream_silent_after_its_head_is_cut_after_the_idle_timeout(
    make_gateway: GatewayFactory,
) -> None:
    # Were the new read timeout not taken up at once, the cut would come after 60 s.
    client = await make_gateway(upstream={"idle_timeout": 0.2, "first_byte_timeout": 60})
    resp = await client.post("/v1/chat/completions", json={**STREAM, "fake": {"hang_after": 0}})
    events = sse.events(await asyncio.wait_for(resp.read(), 10))
    last = sse.event_json(events[-1])
    assert last is not None
    assert "timed out waiting for the next event" in last["error"]["message"]


async def test_a_runner_makes_its_connections_through_make_server_and_the_server_s_call(
    fake_url: str,
) -> None:
    runner = GatewayRunner(create_app(gateway_config(fake_url)))
    await runner.setup()
    try:
        assert runner.server is not None
        connection: Any = runner.server()
        assert isinstance(connection, web_protocol.RequestHandler)
        assert type(connection).handle_error is not web_protocol.RequestHandler.handle_error
        assert type(connection).log_exception is not web_protocol.RequestHandler.log_exception
    finally:
        await runner.cleanup()


async def test_handle_error_answers_a_request_aiohttp_cannot_parse(port: int) -> None:
    status, headers, body = await exchange(port, UNPARSEABLE)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "invalid_http_request"


async def test_log_exception_logs_a_request_aiohttp_cannot_parse(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        await exchange(port, UNPARSEABLE)
    messages = [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"]
    assert [m.startswith("unparseable request from 127.0.0.1: ") for m in messages] == [True]


async def test_the_runner_s_settings_reach_its_connections(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # `access_log=None` travels in the server's `_kwargs`: without them, aiohttp would
    # write an access line of its own.
    raw = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        assert (await exchange(port, raw))[0] == 200
    assert [r for r in caplog.records if r.name == "aiohttp.access"] == []
