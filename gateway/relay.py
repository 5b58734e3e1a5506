"""The request handler: runs the policy chain around a call to an upstream llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import web

from gateway.access import AccessLog
from gateway.admission import Admission
from gateway.calls import Caller
from gateway.catalog import Catalog
from gateway.config import GatewayConfig
from gateway.context import (
    DISCONNECTED,
    INTERNAL_ERROR,
    OK,
    REJECTED,
    UPSTREAM_ERROR,
    Reply,
    RequestContext,
)
from gateway.endpoints import MODEL_ENDPOINTS, TOKEN_IDS
from gateway.errors import GatewayError, bad_request, internal_error
from gateway.failover import Failover
from gateway.leases import shared_slots
from gateway.logs import current_request
from gateway.outbound import upstream_payload
from gateway.policy import Chain
from gateway.prefix import ROUTES
from gateway.resilience import Failure
from gateway.resources import Resources
from gateway.runtime import PolicyRuntime
from gateway.tracing import Tracing
from gateway.upstreams import Pool, Upstream
from gateway.validate import check_vocabulary
from gateway.variants import route

log = logging.getLogger("gateway.relay")


class Relay:
    def __init__(
        self,
        config: GatewayConfig,
        runtime: PolicyRuntime,
        pool: Pool,
        session: aiohttp.ClientSession,
        tracing: Tracing | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.tracing = tracing
        self.metrics = runtime.metrics
        self.pool = pool
        self.failover = Failover(config.upstream.retry, pool, runtime.metrics)
        self.admission = Admission(
            config.upstream.admission, pool, runtime.metrics, lambda: runtime.document.tiers
        )
        self.waiting = pool.waiting
        self.routes = {
            (model, route): runtime.metrics.prefix_routes.labels(model, route)
            for model in pool.prefix
            for route in ROUTES
        }
        self.session = session
        self.max_body = config.server.max_body_bytes
        self.caller = Caller(config, session, tracing, _finish)
        self.access_log = AccessLog() if config.logging.access_log else None
        self.default_model = next(iter(config.models)) if len(config.models) == 1 else None
        self.catalog = Catalog(config.models)
        self.completions: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        ctx = RequestContext(request, endpoint, self.max_body, default_model=self.default_model)
        current_request.set(ctx)
        if self.tracing is not None:
            self.tracing.start(ctx)
        # The chain in force when the request arrived serves it to the end, across reloads.
        chain = self.runtime.chain
        chain.active += 1
        try:
            return await self._serve(ctx, chain)
        except asyncio.CancelledError:
            # A client that closes right after `[DONE]` (as the OpenAI SDK does) while the
            # upstream's response is still ending has had its whole answer.
            if not ctx.delivered:
                ctx.outcome = DISCONNECTED
            raise
        finally:
            ctx.finished = time.perf_counter()
            # Completion work first: whatever the observers below do, limits are settled,
            # usage is recorded and the chain is released.
            if chain.wants_completion:
                # A task of its own: completion work (usage, limits) must survive the
                # client hanging up, which cancels this handler.
                task = asyncio.create_task(self._complete(ctx, chain))
                self.completions.add(task)
                task.add_done_callback(self.completions.discard)
            else:
                self.runtime.release(chain)
            self.metrics.observe(ctx)
            if self.tracing is not None:
                self.tracing.finish(ctx)
            if self.access_log is not None:
                self.access_log.log(ctx)

    async def _complete(self, ctx: RequestContext, chain: Chain) -> None:
        try:
            await chain.on_complete(ctx)
        finally:
            self.runtime.release(chain)

    async def _serve(self, ctx: RequestContext, chain: Chain) -> web.StreamResponse:
        try:
            try:
                reply = await chain.on_request(ctx)
                if reply is None:
                    if ctx.endpoint in MODEL_ENDPOINTS:
                        return await self._proxy(ctx, chain)
                    reply = Reply(200, self.catalog.answer(ctx))  # the model list, or one
                if reply.status >= 400 and ctx.outcome == OK:
                    ctx.outcome = REJECTED
                return await self._send(ctx, chain, reply)
            except GatewayError as err:
                ctx.outcome = UPSTREAM_ERROR if err.status >= 500 and ctx.upstream else REJECTED
                ctx.error = err.message
                return await self._answer(ctx, chain, ctx.dialect.error_response(err))
        except Exception as exc:  # answering a GatewayError can fail too
            return await self._internal_error(ctx, chain, exc)

    async def _internal_error(
        self, ctx: RequestContext, chain: Chain, exc: Exception
    ) -> web.StreamResponse:
        """The catch-all: a failure of the gateway's own is a 500 counted and logged once."""
        log.error(
            "internal error serving %s %s", ctx.request.method, ctx.request.path, exc_info=exc
        )
        ctx.status, ctx.outcome = 500, INTERNAL_ERROR
        ctx.error = f"internal error: {exc.__class__.__name__}"
        err = internal_error(ctx.request_id)
        started = ctx.response
        if started is not None and started.prepared:
            # The head is gone: a stream ends with the error event, any answer is cut off.
            if started.content_type == "text/event-stream":
                with contextlib.suppress(ConnectionError):
                    await started.write(ctx.dialect.error_event(err, ctx.events_sent))
            started.force_close()
            return started
        response = ctx.dialect.error_response(err)
        try:
            await chain.on_response(ctx, response.headers)  # the request ID's, among others
        except Exception as again:  # the hook that failed first, most likely: no second traceback
            log.warning("a policy failed again while answering an internal error: %r", again)
        return await _finish(ctx, response)

    async def _send(self, ctx: RequestContext, chain: Chain, reply: Reply) -> web.StreamResponse:
        response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        response.headers["Content-Type"] = reply.content_type
        return await self._answer(ctx, chain, response)

    async def _answer(
        self, ctx: RequestContext, chain: Chain, response: web.Response
    ) -> web.StreamResponse:
        """A whole answer of the gateway's or a policy's, once the policies have seen its head."""
        ctx.status = response.status
        await chain.on_response(ctx, response.headers)
        return await _finish(ctx, response)

    async def _proxy(self, ctx: RequestContext, chain: Chain) -> web.StreamResponse:
        await ctx.json()
        if ctx.model is None:
            raise bad_request("Missing required parameter: 'model'.", param="model")
        document = self.runtime.document
        experiment = document.variants.get(ctx.model)
        if experiment is not None:  # the model stands for variants: now one of them
            route(ctx, ctx.model, experiment, document.tiers)
        if ctx.endpoint in TOKEN_IDS:
            check_vocabulary(ctx.endpoint, ctx.body or {}, self.pool.vocab(ctx.model))
        # Built once (a retry sends the same bytes), and before `pick`: a body that cannot be
        # sent must not take a half-open circuit's one trial and never report on it.
        payload = upstream_payload(ctx)
        prompt = ctx.prefix = self.pool.prompt(ctx.model, ctx.endpoint, ctx.body or {})
        upstream = self.pool.pick(ctx.model, prompt=prompt)
        started = time.perf_counter()
        try:
            try:
                return await self._attempt(ctx, chain, upstream, payload)
            except Failure as failure:
                return await self._failed(ctx, chain, failure, upstream, payload)
        finally:
            # A whole body is read before it is sent on: its last byte came at `first_byte_at`.
            # A stream's relay interleaves reading and writing: all of it counts as upstream.
            end = ctx.first_byte_at
            if end is None or ctx.stream:
                end = time.perf_counter()
            ctx.upstream_seconds = end - started

    async def _attempt(
        self, ctx: RequestContext, chain: Chain, upstream: Upstream, payload: bytes
    ) -> web.StreamResponse:
        """One attempt, in a slot of the picked upstream, or of whichever upstream of the
        model frees one first when all are taken (or others wait already)."""
        if upstream.full or self.waiting.get(ctx.model or ""):
            upstream = await self.admission.wait(ctx, upstream)
        elif self.admission.leases is None or not upstream.limit:
            upstream.in_flight += 1
        else:  # shared with other replicas (`gateway.leases`)
            upstream = await self.admission.lease(ctx, upstream)
        if ctx.prefix is not None and upstream.prefixes is not None:
            upstream.prefixes.add(ctx.prefix.chain)
            if not ctx.attempts:  # how it was routed, once it has its slot
                self.routes[str(ctx.model), ctx.prefix.route].inc()
        try:
            return await self.caller.attempt(ctx, chain, upstream, payload)
        finally:
            self.admission.release(ctx, upstream)

    async def _failed(
        self,
        ctx: RequestContext,
        chain: Chain,
        failure: Failure,
        upstream: Upstream,
        payload: bytes,
    ) -> web.StreamResponse:
        """Failover after a first attempt failed before any byte reached the client; once
        none is left to make, the last failure is the answer (the upstream's own, if any)."""

        async def attempt(upstream: Upstream) -> web.StreamResponse:
            return await self._attempt(ctx, chain, upstream, payload)

        try:
            return await self.failover.retry(ctx, failure, upstream, attempt)
        except Failure as last:
            if last.answer is not None:
                return await self.caller.relay_body(ctx, chain, *last.answer)
            if ctx.attempts > 1:
                last.error.message += f" ({ctx.attempts} attempts)"
            raise last.error from last

    async def start(self, resources: Resources) -> None:
        """Share the upstreams' slots with the other replicas, when configured to."""
        self.admission.leases = await shared_slots(
            self.config, resources, self.metrics.dependency_errors
        )

    async def drain(self) -> None:
        """Wait for completion work still running (at shutdown)."""
        while self.completions:
            await asyncio.gather(*self.completions, return_exceptions=True)
        if self.access_log is not None:
            self.access_log.flush()
        await self.admission.close()


async def _finish(ctx: RequestContext, response: web.Response) -> web.StreamResponse:
    """Send the whole answer from inside the handler, so completion runs after the client has it."""
    ctx.response = response
    try:
        await response.prepare(ctx.request)
        await response.write_eof()
    except ConnectionResetError:
        ctx.outcome = DISCONNECTED
    return response
