"""aiohttp's answers to requests it cannot parse, in OpenAI's JSON shape.

aiohttp answers a malformed request (a control character in a header, an over-long line,
conflicting framing) itself, before any handler or middleware runs, from
`RequestHandler.handle_error`, in plain text, and logs it (`log_exception`) as an error with
a traceback that quotes the raw bytes. Neither those methods nor the way a runner makes its
connection handlers (`AppRunner._make_server`, `Server.__call__` and the server's
`_kwargs`) is public API, and nothing public replaces them: this module is the only place
that relies on them, and tests/gateway/test_aiohttp_internals.py breaks when aiohttp
changes them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong

from gateway.errors import GatewayError, internal_error


def protocol_error(status: int, exc: BaseException | None) -> GatewayError:
    """What was wrong with a request aiohttp could not parse; never its raw bytes."""
    if status >= 500:
        return internal_error(None, status)
    if isinstance(exc, LineTooLong):
        message = (
            "A request line or header is longer than the gateway accepts; send shorter headers."
        )
        return GatewayError(status, message, code="header_too_large")
    if isinstance(exc, ContentEncodingError):
        message = (
            "The request's Content-Encoding is not supported; send the body uncompressed,"
            " or compressed with gzip or deflate."
        )
        return GatewayError(status, message, code="unsupported_content_encoding")
    message = (
        f"The request is not valid HTTP/1.1 ({_reason(exc)}); fix its request line,"
        " headers or framing."
    )
    return GatewayError(status, message, code="invalid_http_request")


def _reason(exc: BaseException | None) -> str:
    """What aiohttp found wrong, without the request's bytes: the first line of its
    message names the problem, the lines after it quote the offending bytes (an over-long
    line's message quotes them on the first)."""
    if isinstance(exc, LineTooLong):
        return "a request line or header is too long"
    reason = exc.message if isinstance(exc, HttpProcessingError) else ""
    reason = reason.strip().split("\n", 1)[0].rstrip(":. ") if isinstance(reason, str) else ""
    return reason or "unreadable request"


class _Connection(web_protocol.RequestHandler):
    __slots__ = ()  # as aiohttp's: no per-connection __dict__

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own logs the error (through `log_exception`) and refuses once an
        # answer has begun; only the body it would send is replaced.
        plain = super().handle_error(request, status, exc, message)
        answer = protocol_error(plain.status, exc).response()
        answer.force_close()
        return answer

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if not isinstance(exc, HttpProcessingError):
            super().log_exception(*args, **kw)
            return
        # The client's mistake: one line, no traceback. aiohttp's message quotes the bytes
        # it could not parse (a credential among them, whichever header or URL holds it).
        remote = args[1] if len(args) > 1 else None  # ("Error handling request from %s", remote)
        self.logger.info("unparseable request from %s: %s", remote, _reason(exc))


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An `AppRunner` whose connections answer parse errors in OpenAI's JSON shape."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
