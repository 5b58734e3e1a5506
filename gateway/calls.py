"""One attempt of a request: a call to one upstream, relayed to the client as it comes,
unless it fails before any byte reached the client (`gateway.resilience.Failure`: then
failover may try another upstream). Every outcome feeds the upstream's circuit."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.circuit import HALF_OPEN, Circuit
from gateway.config import GatewayConfig
from gateway.context import UPSTREAM_ERROR, RequestContext
from gateway.errors import GatewayError, upstream_failed
from gateway.outbound import sendable, unanswered, upstream_headers
from gateway.policy import Chain
from gateway.resilience import RESET, Failure, reason_of, status_reason
from gateway.sse import body_usage, upstream_message
from gateway.streaming import UPSTREAM_BROKEN, relay_stream
from gateway.tracing import Tracing
from gateway.upstreams import Upstream

# What llama-server does not serve (rerank without `--reranking`), said by a healthy
# upstream: relayed as it is, neither retried nor held against its circuit.
NOT_SUPPORTED = 501
JSON = "application/json"
Finish = Callable[[RequestContext, web.Response], Awaitable[web.StreamResponse]]


class Caller:
    def __init__(
        self,
        config: GatewayConfig,
        session: aiohttp.ClientSession,
        tracing: Tracing | None,
        finish: Finish,
    ) -> None:
        self.session = session
        self.tracing = tracing
        self.finish = finish
        self.idle_timeout = config.upstream.idle_timeout
        self.first_byte_timeout = config.upstream.first_byte_timeout
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=config.upstream.connect_timeout,
            sock_read=config.upstream.first_byte_timeout,
        )

    async def attempt(
        self, ctx: RequestContext, chain: Chain, upstream: Upstream, payload: bytes
    ) -> web.StreamResponse:
        """One call; the caller holds a slot of `upstream` for it (`gateway.admission`)."""
        ctx.upstream = upstream.url
        ctx.attempts += 1
        return await self._call(ctx, chain, upstream, payload)

    async def _call(
        self, ctx: RequestContext, chain: Chain, upstream: Upstream, payload: bytes
    ) -> web.StreamResponse:
        url = upstream.endpoint_urls[ctx.endpoint]
        headers = upstream_headers(ctx, upstream, self.tracing)
        circuit = upstream.circuit
        trial = circuit.state == HALF_OPEN  # `pick` gave this request the trial
        try:
            resp = await self.session.post(
                url, data=sendable(payload), headers=headers, timeout=self.timeout
            )
        except UPSTREAM_BROKEN as exc:
            circuit.failure(trial)
            error = unanswered(ctx, upstream, exc, self.first_byte_timeout)
            raise Failure(reason_of(exc), error) from exc
        except BaseException:  # cancelled: a client that hung up says nothing of the upstream
            circuit.abandon(trial)
            raise
        try:
            if resp.status >= 500 and resp.status != NOT_SUPPORTED:
                raise await self._refused(resp, circuit, trial)
            circuit.success(trial)
            protocol = resp.connection.protocol if resp.connection else None
            if protocol is not None:
                # From now on the wait between two reads is bounded by the idle timeout.
                # aiohttp has no public way to change it once the head is in: this relies
                # on its protocol's `read_timeout` and `start_timeout()`, which
                # tests/gateway/test_aiohttp_internals.py checks.
                protocol.read_timeout = self.idle_timeout
                protocol.start_timeout()
            if resp.content_type == "text/event-stream":
                ctx.status = resp.status
                return await relay_stream(ctx, resp, chain)
            data = await _read(resp)
            content_type = resp.headers.get("Content-Type", "application/json")
            return await self.relay_body(ctx, chain, resp.status, content_type, data)
        finally:
            # Releasing a half-read answer closes its connection (a complete one goes back
            # to the pool): that is how llama-server learns the client is gone.
            resp.release()

    async def _refused(
        self, resp: aiohttp.ClientResponse, circuit: Circuit, trial: bool
    ) -> Failure:
        """A 5xx head: nothing of it has reached the client, so another upstream may answer."""
        try:
            data = await _read(resp)
        except GatewayError as err:
            circuit.failure(trial)
            return Failure(RESET, err)
        except BaseException:
            circuit.abandon(trial)
            raise
        circuit.failure(trial)
        message = upstream_message(data) or f"the upstream answered {resp.status}"
        answer = (resp.status, resp.headers.get("Content-Type", "application/json"), data)
        return Failure(status_reason(resp.status), upstream_failed(message), answer)

    async def relay_body(
        self, ctx: RequestContext, chain: Chain, status: int, content_type: str, data: bytes
    ) -> web.StreamResponse:
        ctx.status = status
        ctx.first_byte_at = time.perf_counter()
        if status < 400:
            ctx.usage, ctx.cached_tokens = body_usage(data, ctx.dialect)
        else:
            ctx.outcome = UPSTREAM_ERROR
            ctx.error = upstream_message(data)
            translated = ctx.dialect.upstream_error(status, data)
            if translated is not data:
                data, content_type = translated, JSON
            elif not _is_json(content_type):  # a proxy's page, a crash's plain text
                data, content_type = ctx.dialect.error_body(_unshaped(status)), JSON
        headers = CIMultiDict({"Content-Type": content_type})
        await chain.on_response(ctx, headers)
        if chain.wants_events:
            data = await chain.on_event(ctx, data) or b""
        if ctx.taps is not None:
            for receive in ctx.taps:
                receive(data)
        return await self.finish(ctx, web.Response(status=status, body=data, headers=headers))


def _is_json(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind == JSON or kind.endswith("+json")


def _unshaped(status: int) -> GatewayError:
    """An upstream's error that is not JSON, in OpenAI's shape: every error is (the
    upstream's own words are in the log, `error` of the access line)."""
    return GatewayError(
        status,
        f"The upstream answered {status} without an error a client can read; retry, or"
        " report the request ID to the operator.",
        type="server_error" if status >= 500 else "invalid_request_error",
        code="upstream_error",
    )


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.read()
    except UPSTREAM_BROKEN as exc:
        raise upstream_failed(
            f"The upstream's answer broke off: {exc.__class__.__name__}."
        ) from exc
