"""CORS for browser clients (`server.cors`), off until origins are listed.

A preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here, before any
policy: a browser sends it without credentials, so the auth policy never sees it. Every
other answer, errors and streams included, gets its headers from an `on_response_prepare`
hook, the last moment a stream's head can still change. aiohttp-cors would do both, but it
answers refusals in plain text (every error of the gateway is OpenAI-shaped JSON), never
sends `Vary: Origin`, and refuses the catch-all route that answers unknown URLs.

The gateway never sends `Access-Control-Allow-Credentials`: callers authenticate with a
header their own code sets, not with cookies. That keeps the `*` wildcards valid.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from pydantic import Field, field_validator

from gateway.errors import GatewayError
from gateway.settings import PolicySettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ANY = "*"
_ORIGIN = re.compile(r"^https?://[a-z0-9.\-\[\]:]+$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # a header or method name
_MAX_REFLECTED = 64  # header names echoed from a preflight, at most
_PREFLIGHT_VARY = ", ".join(
    (hdrs.ORIGIN, hdrs.ACCESS_CONTROL_REQUEST_METHOD, hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
)


class CorsConfig(PolicySettings):
    # Exact origins (`https://app.example.com`, `http://localhost:5173`), or `*` for any.
    origins: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD", "POST"])
    # Request headers a browser may send; `*`: whichever the preflight asks for.
    headers: list[str] = Field(default_factory=lambda: [ANY])
    max_age_seconds: int = Field(600, ge=0, le=86400)
    # Response headers a page's script may read; `*`: all of them.
    expose_headers: list[str] = Field(default_factory=lambda: [ANY])

    @field_validator("origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != ANY and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme and host (and port) in lower"
                    " case, without a path or a slash at the end, e.g. https://app.example.com;"
                    " or '*' for any origin"
                )
        return origins

    @field_validator("methods", "headers", "expose_headers")
    @classmethod
    def _tokens(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header or method name")
        return names


def refused() -> GatewayError:
    return GatewayError(
        403,
        "This origin may not call the gateway from a browser: it is not listed in"
        " server.cors.origins.",
        type="permission_error",
        code="origin_not_allowed",
    )


class Cors:
    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = ANY in config.origins
        self.origins = frozenset(config.origins)
        self.methods = ", ".join(config.methods)
        self.reflect_headers = ANY in config.headers
        self.headers = ", ".join(config.headers)
        self.max_age = str(config.max_age_seconds)
        self.expose = ", ".join(config.expose_headers)

    def allowed(self, origin: str | None) -> str | None:
        """What `Access-Control-Allow-Origin` says to this origin; None: nothing."""
        if origin is None:
            return None
        if self.any_origin:
            return ANY
        return origin if origin in self.origins else None

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer: the allowed origin, and `Vary: Origin` (a cache must not hand one
        origin's answer to another)."""
        headers = response.headers
        if hdrs.ACCESS_CONTROL_ALLOW_METHODS in headers:  # a preflight's own answer
            return
        vary = headers.get(hdrs.VARY)
        if vary is None:
            headers[hdrs.VARY] = hdrs.ORIGIN
        elif hdrs.ORIGIN.lower() not in vary.lower():
            headers[hdrs.VARY] = f"{vary}, {hdrs.ORIGIN}"
        origin = self.allowed(request.headers.get(hdrs.ORIGIN))
        if origin is not None:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self.expose

    def preflight(self, otherwise: Handler) -> Handler:
        """The OPTIONS handler of a route: a preflight's answer, else `otherwise`."""

        async def handle(request: web.Request) -> web.StreamResponse:
            asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
            if asked is None:
                return await otherwise(request)
            origin = self.allowed(request.headers.get(hdrs.ORIGIN))
            if origin is None:
                return refused().response({hdrs.VARY: hdrs.ORIGIN})
            return web.Response(status=204, headers=self._preflight_headers(request, origin))

        return handle

    def _preflight_headers(self, request: web.Request, origin: str) -> dict[str, str]:
        headers: dict[str, str] = {
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: self.methods,
            hdrs.ACCESS_CONTROL_MAX_AGE: self.max_age,
            hdrs.VARY: _PREFLIGHT_VARY,
        }
        allowed = self.headers
        if self.reflect_headers:
            # `*` does not cover `Authorization` (the Fetch standard): the names asked for
            # are echoed instead, those that are header names at all.
            asked = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
            names = [n.strip() for n in asked.split(",")[:_MAX_REFLECTED]]
            allowed = ", ".join(n for n in names if _TOKEN.match(n)) or ANY
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = allowed
        return headers


def install(app: web.Application, config: CorsConfig, otherwise: Handler) -> None:
    """CORS on every route added so far (call it before the catch-all route): an OPTIONS
    handler per route for preflights (`otherwise` answers other OPTIONS requests), and the
    headers of every answer. Nothing at all without origins."""
    if not config.origins:
        return
    cors = Cors(config)
    app.on_response_prepare.append(cors.on_prepare)
    handler = cors.preflight(otherwise)
    for resource in list(app.router.resources()):
        # One that answers every method answers preflights too (with its 404).
        taken = any(route.method in (hdrs.METH_OPTIONS, hdrs.METH_ANY) for route in resource)
        if isinstance(resource, web.Resource) and not taken:
            resource.add_route(hdrs.METH_OPTIONS, handler)
