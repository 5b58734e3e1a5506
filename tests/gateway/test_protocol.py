"""Requests aiohttp cannot parse get OpenAI-shaped JSON 400s, over raw sockets."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import web

from gateway.protocol import GatewayRunner
from tests.support.raw_http import exchange

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
BODY = b'{"model": "fake", "messages": []}'

MALFORMED = {
    "control character in a header value": HEAD + b"Authorization: Bearer ab\x01cd\r\n",
    "control character in a header name": HEAD + b"X-Ke\x01y: value\r\n",
    "over-long header line": HEAD + b"X-Long: " + b"a" * 9000 + b"\r\n",
    "negative Content-Length": HEAD + b"Content-Length: -2\r\n",
    "Transfer-Encoding with Content-Length": HEAD
    + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    "unsupported Content-Encoding": HEAD + b"Content-Encoding: br\r\nContent-Length: 2\r\n",
    "header line without a colon": HEAD + b"NoColonHere\r\n",
    "bad request line": b"POST /v1 /x HTTP/1.1\r\nHost: gateway\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_gets_an_openai_shaped_400(port: int, raw: bytes) -> None:
    status, headers, body = await exchange(port, raw + b"\r\n" + BODY)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] in {
        "invalid_http_request",
        "header_too_large",
        "unsupported_content_encoding",
    }
    assert b"\\x01" not in body  # what was wrong, never the request's bytes


async def test_an_over_long_header_is_named_as_such(port: int) -> None:
    status, _, body = await exchange(port, MALFORMED["over-long header line"] + b"\r\n")
    assert status == 400
    assert orjson.loads(body)["error"]["code"] == "header_too_large"


async def test_the_reason_is_named_without_the_offending_bytes(port: int) -> None:
    raw = MALFORMED["Transfer-Encoding with Content-Length"] + b"\r\n"
    message = orjson.loads((await exchange(port, raw))[2])["error"]["message"]
    assert "Transfer-Encoding can't be present with Content-Length" in message
    assert "chunked" not in message


async def test_a_well_formed_request_on_the_same_runner_is_served(port: int) -> None:
    raw = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    status, _, body = await exchange(port, raw)
    assert status == 200
    assert orjson.loads(body) == {"status": "ok"}


async def test_a_failure_outside_every_handler_catch_all_is_a_json_500() -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("no handler caught this")

    app = web.Application()
    app.router.add_get("/boom", boom)
    runner = GatewayRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        raw = b"GET /boom HTTP/1.1\r\nHost: gateway\r\n\r\n"
        status, headers, body = await exchange(runner.addresses[0][1], raw)
    finally:
        await runner.cleanup()
    assert status == 500
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")


SECRET = b"StaticSecret0123456789"
# aiohttp quotes the offending bytes in its parse errors: a header's value after a tab,
# a folded line without its header's name, a value with a quote in it, a URL.
QUOTING = {
    "tab after the colon": HEAD + b"Authorization:\tBasic " + SECRET + b"\x00\r\n",
    "folded header line": HEAD + b"Authorization: Bearer\r\n " + SECRET + b"\r\n",
    "quote in the value": HEAD + b"Authorization: Bearer '" + SECRET + b'"\x01\r\n',
    "control character in the URL": b"GET /v1/models?key=" + SECRET + b"\x01 HTTP/1.1\r\n",
    "over-long URL": b"GET /v1/models?key=" + SECRET + b"a" * 9000 + b" HTTP/1.1\r\n",
}


@pytest.mark.parametrize("raw", QUOTING.values(), ids=QUOTING.keys())
async def test_a_malformed_request_is_logged_in_one_line_without_its_bytes(
    port: int, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, _, _ = await exchange(port, raw + b"Host: gateway\r\n\r\n")
    assert status == 400
    (record,) = [r for r in caplog.records if r.name == "aiohttp.server"]
    # The client's mistake: no error level, no traceback, the reason without the bytes.
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert record.getMessage().startswith("unparseable request from 127.0.0.1: ")
    assert SECRET.decode() not in caplog.text
