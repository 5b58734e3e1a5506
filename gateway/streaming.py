"""Relaying an upstream SSE answer to the client event by event, as it arrives.

Fast path: bytes are written as they come, cut only at event boundaries (one `rfind`
per chunk). Events are split and parsed only where needed: chunks that carry usage
(usually the last one) and, when a policy implements `on_event`, every event.
"""

from __future__ import annotations

import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway import sse
from gateway.context import DISCONNECTED, UPSTREAM_ERROR, RequestContext
from gateway.errors import upstream_failed
from gateway.policy import Chain

log = logging.getLogger("gateway.streaming")

# What a broken upstream looks like while its answer is being read.
UPSTREAM_BROKEN = (aiohttp.ClientError, TimeoutError)
# The head of every relayed stream, before the policies' `on_response` adds to its copy.
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def relay_stream(
    ctx: RequestContext, resp: aiohttp.ClientResponse, chain: Chain
) -> web.StreamResponse:
    headers = CIMultiDict(STREAM_HEADERS)
    await chain.on_response(ctx, headers)
    out = web.StreamResponse(status=resp.status, headers=headers)
    ctx.response = out
    try:
        await out.prepare(ctx.request)
    except ConnectionResetError:  # the client left while the upstream was thinking
        ctx.outcome = DISCONNECTED
        return out
    if resp.status >= 400:
        ctx.outcome = UPSTREAM_ERROR
    reader = resp.content
    pending = b""
    slow = chain.wants_events
    while True:
        try:
            chunk = await reader.readany()
        except UPSTREAM_BROKEN as exc:
            await _broken(ctx, out, exc)
            return out
        if not chunk:
            break
        if ctx.first_byte_at is None:
            ctx.first_byte_at = time.perf_counter()
        ready, pending = sse.split_complete(pending + chunk if pending else chunk)
        if ready and not await _forward(ctx, out, chain, ready, slow):
            return out
    # An unterminated last event is still delivered, terminated.
    last = pending.rstrip(b"\r\n")
    if last and not await _forward(ctx, out, chain, last + sse.SEPARATOR, slow):
        return out
    try:
        await out.write_eof()
    except ConnectionResetError:
        if not ctx.delivered:
            ctx.outcome = DISCONNECTED
    return out


async def _forward(
    ctx: RequestContext, out: web.StreamResponse, chain: Chain, ready: bytes, slow: bool
) -> bool:
    """Write complete events; False when the client has gone."""
    if sse.mentions_error(ready):
        ctx.outcome = UPSTREAM_ERROR
        ctx.error = "the upstream sent an error event during the stream"
        ready = ctx.dialect.stream_error(ready)
    if slow or sse.mentions_usage(ready):
        ready = await _process(ctx, chain, ready, slow)
    if not ready:
        return True
    try:
        await out.write(ready)
    except ConnectionResetError:
        ctx.outcome = DISCONNECTED
        return False
    if ctx.taps is not None:
        for receive in ctx.taps:
            receive(ready)
    # Events start a line; `data:` inside generated text never does (JSON strings hold
    # no raw newline), and `ready` always starts at an event boundary.
    ctx.events_sent += ready.count(b"\ndata:") + ready.startswith(b"data:")
    if ctx.dialect.stream_end in ready:
        ctx.delivered = True
    return True


async def _process(ctx: RequestContext, chain: Chain, ready: bytes, slow: bool) -> bytes:
    kept = []
    dialect = ctx.dialect
    for event in sse.events(ready):
        if sse.mentions_usage(event):
            data = sse.event_json(event)
            usage = None if data is None else dialect.event_usage(data, ctx.usage)
            if data is not None and usage is not None:
                ctx.usage = usage
                ctx.cached_tokens = sse.cached_tokens(data, usage)
                # The usage-only event the gateway asked for on the client's behalf.
                hidden = dialect.asks_usage and not ctx.client_wants_usage
                if hidden and data.get("choices") == []:
                    continue
        if slow:
            result = await chain.on_event(ctx, event)
            if result is None:
                continue
            event = result
        kept.append(event)
    return b"".join(kept)


async def _broken(ctx: RequestContext, out: web.StreamResponse, exc: BaseException) -> None:
    """End the stream with an error event in its API's shape: the SDK raises instead of
    hanging, or taking the answer for whole."""
    reason = (
        "timed out waiting for the next event"
        if isinstance(exc, TimeoutError)
        else "connection lost"
    )
    err = upstream_failed(f"The upstream stream broke off ({reason}); the answer is incomplete.")
    ctx.outcome = UPSTREAM_ERROR
    ctx.error = err.message
    log.warning(
        "upstream stream broke off: %s", exc.__class__.__name__, extra={"upstream": ctx.upstream}
    )
    try:
        await out.write(ctx.dialect.error_event(err, ctx.events_sent))
        await out.write_eof()
    except ConnectionResetError:
        ctx.outcome = DISCONNECTED
