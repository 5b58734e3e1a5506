"""Wiring: the aiohttp application, its shared resources and its routes."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from gateway import __version__, cors
from gateway.background import running
from gateway.config import GatewayConfig
from gateway.endpoints import ENDPOINTS, RESPONSES, dialect_of
from gateway.errors import GatewayError, internal_error
from gateway.exposition import MetricsEndpoint, publish_forever
from gateway.metrics import Metrics, multiprocess_dir
from gateway.openapi import CATCH_ALL, document
from gateway.policy import Chain
from gateway.policydoc import PolicySource
from gateway.probe import probe_forever
from gateway.relay import Relay
from gateway.runtime import PolicyRuntime
from gateway.tracing import Tracing
from gateway.upstreams import Pool

log = logging.getLogger("gateway.app")

_PATHS = [e.path for e in ENDPOINTS]
_SERVED = f"{', '.join(_PATHS[:-1])} and {_PATHS[-1]}"
_PARAM = re.compile(r"\{(\w+)\}")
# Any character, a decoded newline (%0A) included: `.` would leave such a path to
# aiohttp's own plain-text 404.
_ANY = r"[\s\S]"


def _rest_of_path(param: re.Match[str]) -> str:
    """A path parameter takes the rest of the path: a model's name may hold a slash."""
    return "{" + param[1] + ":" + _ANY + "+}"


# The Responses API's routes to a stored response (the SDK's `retrieve`, `delete`,
# `cancel`, `input_items.list`): the gateway stores none, every one is unknown.
_STORED = tuple(RESPONSES.path + tail for tail in ("/{id}", "/{id}/cancel", "/{id}/input_items"))


@dataclass
class State:
    config: GatewayConfig
    runtime: PolicyRuntime
    pool: Pool
    draining: bool = False
    relay: Relay | None = None
    openapi: bytes | None = None  # made on first request, once the router is frozen


STATE = web.AppKey("state", State)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    config: GatewayConfig, chain: Chain | None = None, config_path: Path | None = None
) -> web.Application:
    """The gateway application; `chain` replaces the configured policy chain (for tests)."""
    # The body limit is enforced per request with an OpenAI-shaped 413; aiohttp's own
    # limit must not be lower.
    app = web.Application(client_max_size=config.server.max_body_bytes)
    pool = Pool.from_config(config)
    served = [(model, u.url) for model, upstreams in pool.by_model.items() for u in upstreams]
    metrics = Metrics(models=config.models, upstreams=served)
    runtime = PolicyRuntime(
        PolicySource(config, config_path), chain=chain, metrics=metrics, upstreams=pool
    )
    state = State(config, runtime, pool)
    app[STATE] = state
    app.cleanup_ctx.append(_resources)
    # GET routes answer HEAD too (`add_get`), without a body.
    core = {
        "/health": health,
        "/ready": ready,
        "/metrics": MetricsEndpoint(metrics, state.pool).handle,
        "/openapi.json": openapi,
    }
    for path, handler in core.items():
        app.router.add_get(path, _guarded(handler, metrics, path))
    for endpoint in ENDPOINTS:
        add = app.router.add_post if endpoint.method == "POST" else app.router.add_get
        add(_PARAM.sub(_rest_of_path, endpoint.path), _endpoint(endpoint.name))
    for path in _STORED:
        app.router.add_route("*", path, _guarded(no_stored_response, metrics, path))
    _mount_policy_routes(app, runtime, taken={*core, *_PATHS, *_STORED})
    unknown = _guarded(not_found, metrics, "unknown")
    cors.install(app, config.server.cors, unknown)
    app.router.add_route("*", "/{tail:" + _ANY + "*}", unknown, name=CATCH_ALL)
    return app


def _mount_policy_routes(app: web.Application, runtime: PolicyRuntime, taken: set[str]) -> None:
    """Routes that policies serve themselves (admin endpoints), next to the core's."""
    for policy in runtime.chain.policies:
        for method, path in policy.routes():
            if path in taken or not path.startswith("/"):
                raise ValueError(f"policy {policy.name!r} cannot serve {path!r}: it is taken")
            handler = _guarded(
                _policy_route(runtime, policy.name, method, path), runtime.metrics, path
            )
            app.router.add_route(method, path, handler)
            if method == "GET":
                app.router.add_route("HEAD", path, handler)


def _policy_route(runtime: PolicyRuntime, name: str, method: str, path: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        for policy in runtime.chain.policies:
            if policy.name == name:
                handler = policy.routes().get((method, path))
                if handler is not None:
                    return await handler(request)
        return await not_found(request)  # a reload took the policy out of the chain

    return handle


def _guarded(handler: Handler, metrics: Metrics, route: str) -> Handler:
    """The catch-all of the routes outside the relay (which has its own): a failure of the
    gateway's own is an OpenAI-shaped 500 with an ID to quote, logged once and counted."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            request_id = secrets.token_hex(16)
            log.error(
                "internal error serving %s %s",
                request.method,
                request.path,
                exc_info=exc,
                extra={"request_id": request_id},
            )
            metrics.internal_errors.labels(route).inc()
            return internal_error(request_id).response({"X-Request-ID": request_id})

    return guarded


def _endpoint(endpoint: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        relay = request.app[STATE].relay
        assert relay is not None, "the relay exists once the application has started"
        return await relay.handle(request, endpoint)

    return handle


async def _resources(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    upstream = state.config.upstream
    connector = aiohttp.TCPConnector(
        limit=upstream.max_connections,
        keepalive_timeout=upstream.keepalive_seconds,
        ttl_dns_cache=300,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        json_serialize=lambda v: orjson.dumps(v).decode(),
    ) as session:
        tracing = Tracing(state.config.tracing) if state.config.tracing.enabled else None
        relay = Relay(state.config, state.runtime, state.pool, session, tracing)
        state.relay = relay
        await state.runtime.start()
        await relay.start(state.runtime.resources)
        try:
            async with (
                running(
                    probe_forever(
                        session,
                        state.pool,
                        upstream.health_interval_seconds,
                        upstream.health_timeout_seconds,
                    ),
                    "health-prober",
                ),
                running(state.runtime.watch(state.config.policy_reload_seconds), "policy-watch"),
                _publisher(state),
            ):
                yield
                await relay.drain()
        finally:
            await state.runtime.close()
            if tracing is not None:  # exports the spans still queued
                await asyncio.to_thread(tracing.close)


def _publisher(state: State) -> AbstractAsyncContextManager[None]:
    """With several workers, each publishes its upstream gauges for the others to add up."""
    if multiprocess_dir() is None:
        return nullcontext()
    return running(publish_forever(state.runtime.metrics, state.pool), "metrics-publisher")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"}, dumps=_dumps)


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = state.pool.ready()
    policies = await state.runtime.chain.readiness()
    checks = {
        **{f"model:{m}": ok for m, ok in models.items()},
        **{name: check.ok for name, check in policies.items()},
    }
    required = [*models.values(), *(c.ok for c in policies.values() if c.required)]
    ok = not state.draining and all(required)
    body = {"status": "ready" if ok else "not ready", "draining": state.draining, "checks": checks}
    return web.json_response(body, status=200 if ok else 503, dumps=_dumps)


async def openapi(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.openapi is None:
        state.openapi = orjson.dumps(document(request.app.router, __version__))
    return web.Response(body=state.openapi, content_type="application/json")


async def not_found(request: web.Request) -> web.Response:
    return dialect_of(request.path).error_response(
        GatewayError(
            404,
            f"Unknown request URL: {request.method} {request.path}. The gateway serves"
            f" {_SERVED} (GET /openapi.json describes every route).",
            code="unknown_url",
        )
    )


async def no_stored_response(request: web.Request) -> web.Response:
    """OpenAI's 404 for a response it does not have, saying why there is none."""
    return GatewayError(
        404,
        f"Response with id '{request.match_info['id']}' not found: this gateway stores no"
        f" responses (llama-server keeps none either). Send the whole conversation in"
        f" 'input' with each POST {RESPONSES.path} instead of 'previous_response_id'.",
    ).response()


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
