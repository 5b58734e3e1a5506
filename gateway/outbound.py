"""The request as the relay sends it upstream, and the error for a call left unanswered."""

from __future__ import annotations

import io

import aiohttp

from gateway.context import RequestContext, serialise_body
from gateway.endpoints import BY_NAME
from gateway.errors import GatewayError, upstream_failed
from gateway.tracing import Tracing
from gateway.upstreams import DOWN, Upstream

LARGE_BODY = 1024 * 1024


def upstream_headers(
    ctx: RequestContext, upstream: Upstream, tracing: Tracing | None
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **ctx.upstream_headers}
    incoming = ctx.request.headers
    for name in BY_NAME[ctx.endpoint].passed_headers:
        if name in incoming:
            headers[name] = incoming[name]
    if upstream.api_key:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    # W3C trace context: the caller's trace (or this request's span) goes on upstream.
    if tracing is not None:
        tracing.upstream_headers(ctx, headers)
    elif "traceparent" in incoming and "traceparent" not in headers:
        headers["traceparent"] = incoming["traceparent"]
        if "tracestate" in incoming:
            headers["tracestate"] = incoming["tracestate"]
    return headers


def upstream_payload(ctx: RequestContext) -> bytes:
    """The body sent upstream, built once: every attempt of a request sends these bytes."""
    body = ctx.body
    assert body is not None
    payload = ctx.raw_body
    spec = BY_NAME[ctx.endpoint]
    if ctx.stream and spec.generates and spec.dialect.asks_usage and not ctx.client_wants_usage:
        # Usage must always be known; the extra event is hidden from this client.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = serialise_body(body)
    elif ctx.body_changed:
        payload = serialise_body(body)
    return payload


def sendable(payload: bytes) -> bytes | io.BytesIO:
    """What one attempt posts: aiohttp sends big bodies in pieces only from a file-like
    object, which a retry cannot read again (a fresh one per attempt)."""
    return io.BytesIO(payload) if len(payload) > LARGE_BODY else payload


def unanswered(
    ctx: RequestContext,
    upstream: Upstream,
    exc: aiohttp.ClientError | TimeoutError,
    first_byte_timeout: float,
) -> GatewayError:
    """The error for a call the upstream never answered; a refused connection marks it down."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        upstream.mark(DOWN, f"connect failed: {exc}")
        return upstream_failed(
            f"Could not connect to the upstream for '{ctx.model}'; retry shortly."
        )
    if isinstance(exc, TimeoutError):
        return upstream_failed(f"The upstream did not answer within {first_byte_timeout:g} s.", 504)
    return upstream_failed(f"The upstream failed before answering: {exc.__class__.__name__}.")
