"""What travels through the policy chain with one request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError

from gateway.dialects import OPENAI, Dialect
from gateway.endpoints import BY_NAME
from gateway.errors import GatewayError, bad_request
from gateway.prefix import Prompt
from gateway.validate import check_fields

# Outcomes handed to `on_complete`.
OK = "ok"
REJECTED = "rejected"  # the gateway or a policy answered instead of the upstream
UPSTREAM_ERROR = "upstream_error"
DISCONNECTED = "client_disconnected"
INTERNAL_ERROR = "internal_error"  # the gateway failed: answered with a 500
MAX_DEPTH = 254  # orjson serialises no deeper nesting


class Assignment(NamedTuple):
    """The variant chosen for a request that named an experiment (`gateway.variants`)."""

    asked: str  # the name the request gave, the experiment's
    experiment: str  # the experiment's own name (what assignments are drawn by)
    model: str  # the variant: the configured model that serves it


@dataclass(slots=True)
class Reply:
    """An answer a policy gives instead of calling the upstream (a cache hit, a 429, ...)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(slots=True)
class RequestContext:
    request: web.Request
    endpoint: str  # the name of its endpoint (gateway.endpoints)
    max_body_bytes: int
    started: float = field(default_factory=time.perf_counter)
    request_id: str | None = None
    # Who is calling, set by an auth policy; the tier decides limits and permissions.
    principal: str | None = None  # e.g. "key:3f9a0c1b2d4e", "jwt:alice", "ip:10.0.0.7"
    key_id: str | None = None  # the API key's id, when an API key was used
    subject: str | None = None  # the person or service behind it (key owner, token subject)
    tier: str | None = None
    model: str | None = None
    default_model: str | None = None  # used when the body names none
    stream: bool = False
    client_wants_usage: bool = False
    raw_body: bytes = b""
    body: dict[str, Any] | None = None
    body_changed: bool = False  # a policy changed `body`: it is serialised again upstream
    upstream_headers: dict[str, str] = field(default_factory=dict)  # extra headers upstream
    upstream: str | None = None  # the last one called
    # Calls made to upstreams: more than one when failover tried another (`gateway.failover`).
    attempts: int = 0
    status: int = 0
    outcome: str = OK
    error: str | None = None
    usage: dict[str, Any] | None = None
    # Prompt tokens of the upstream's answer it took from its prompt (KV) cache instead of
    # evaluating them, when it said (`gateway.sse.cached_tokens`). Not `cached` below.
    cached_tokens: int | None = None
    first_byte_at: float | None = None
    # Seconds spent on the upstream call (sending the request to its last byte), when made.
    upstream_seconds: float | None = None
    # Seconds spent waiting for an upstream slot (`gateway.admission`), when it waited.
    queued_seconds: float | None = None
    # Set when `model` named an experiment: `model` is then the variant's (`gateway.variants`).
    variant: Assignment | None = None
    # Its prompt's blocks, when its model is routed by prefix (`gateway.prefix`).
    prefix: Prompt | None = None
    # Its lease on the upstream's slot in Redis while an attempt runs (`gateway.leases`).
    lease: str | None = None
    # SSE events written to the client: what a stream that broke off had generated.
    events_sent: int = 0
    finished: float | None = None
    # The answer once its head is on its way: an error after that point ends it instead.
    response: web.StreamResponse | None = None
    # The whole answer was written to the client (a stream's `[DONE]` included): a hang-up
    # after this point is not a disconnect mid-answer.
    delivered: bool = False
    # Set by an auth policy: which models this caller may see in GET /v1/models.
    model_allowed: Callable[[str], bool] | None = None
    # How many policies' on_request ran (the chain sets it); later hooks run for those only.
    entered: int = 0
    # Free space for policies, keyed by policy name.
    state: dict[str, Any] = field(default_factory=dict)
    # Set by a policy that answered from a stored answer (a cache hit): `usage` is what that
    # answer stands for; rate limits charge it no tokens, the usage row says `cached`.
    cached: bool = False
    # Callables a policy adds (`tap`) to see the answer's bytes as they go to the client:
    # a whole JSON body once, a stream's complete events chunk by chunk. None costs nothing.
    taps: list[Callable[[bytes], None]] | None = None

    async def json(self) -> dict[str, Any]:
        """The request body as a JSON object, read and checked once (413 and 400 otherwise)."""
        if self.body is not None:
            return self.body
        length = self.request.content_length
        if length is not None and length > self.max_body_bytes:
            raise too_large(self.max_body_bytes)
        try:
            self.raw_body = await self.request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise too_large(self.max_body_bytes) from exc
        except web.RequestPayloadError as exc:
            raise unreadable(self.request, exc) from exc
        body = parse_body(self.raw_body)
        check_fields(self.endpoint, body)
        self.body = body
        self.model = body.get("model") or self.default_model
        self.stream = body.get("stream") is True
        options = body.get("stream_options") or {}
        self.client_wants_usage = self.stream and options.get("include_usage") is True
        return body

    @property
    def dialect(self) -> Dialect:
        """Its API's family: the shape of its errors and usage (`gateway.dialects`)."""
        spec = BY_NAME.get(self.endpoint)
        return OPENAI if spec is None else spec.dialect

    def tap(self, receive: Callable[[bytes], None]) -> None:
        """Have `receive` called with every piece of the answer written to the client."""
        if self.taps is None:
            self.taps = [receive]
        else:
            self.taps.append(receive)

    def elapsed_ms(self, until: float | None = None) -> float:
        return round(((until or time.perf_counter()) - self.started) * 1000, 3)


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body is larger than the gateway's limit of {limit} bytes; send a smaller request"
        " or raise server.max_body_bytes.",
        code="request_too_large",
    )


def unreadable(request: web.Request, exc: web.RequestPayloadError) -> GatewayError:
    # The parser cannot go on after a broken body: the connection closes once this answer is
    # sent, and aiohttp must not try to read the rest of the body (it would raise again).
    request.content.feed_eof()
    request.protocol.close()
    closing = {"Connection": "close"}
    if isinstance(exc.__cause__, ContentEncodingError):
        encoding = request.headers.get("Content-Encoding", "")
        return GatewayError(
            400,
            f"The request body is not valid {encoding!r} data (Content-Encoding); send it"
            " compressed as declared, or without the Content-Encoding header.",
            code="invalid_content_encoding",
            headers=closing,
        )
    return GatewayError(
        400, f"The request body could not be read ({exc}); send it again.", headers=closing
    )


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def serialise_body(body: dict[str, Any]) -> bytes:
    """The body as the upstream gets it, after the gateway or a policy changed it."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        if "Recursion" in str(exc):
            raise bad_request(
                f"The request body nests JSON more than {MAX_DEPTH} levels deep; send a"
                " flatter body.",
                code="too_deeply_nested",
            ) from exc
        raise bad_request(f"The request body cannot be forwarded: {exc}.") from exc
