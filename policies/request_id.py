"""Request IDs: accept a sane client `X-Request-ID` or make one; echo it and send it upstream."""

from __future__ import annotations

import itertools
import re
import secrets

from multidict import CIMultiDict
from pydantic import Field

from gateway.context import Reply, RequestContext
from gateway.logs import redact
from gateway.policy import Policy, PolicyEnv, PolicySettings


class RequestIdSettings(PolicySettings):
    header: str = Field("X-Request-ID", min_length=1)
    # Take the client's ID when it is sane; otherwise (or when false) make a new one.
    trust_client: bool = True
    max_length: int = Field(128, ge=8, le=1024)


class RequestIdPolicy(Policy):
    name = "request_id"
    Settings = RequestIdSettings
    settings: RequestIdSettings

    def __init__(self, settings: RequestIdSettings, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        # Printable, header- and log-safe characters only: nothing that could forge a log line.
        self._sane = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{settings.max_length}}}")
        # 80 random bits per process and a counter: unique across replicas, no syscall
        # per request (uuid4 reads the OS's random source every time).
        self._prefix = secrets.token_hex(10)
        self._counter = itertools.count(1)

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        given = (
            ctx.request.headers.get(self.settings.header) if self.settings.trust_client else None
        )
        if given and self._sane.fullmatch(given) and redact(given) == given:
            ctx.request_id = given
        else:  # a credential pasted as the ID would reach every log line and usage row
            ctx.request_id = self._new_id()
        ctx.upstream_headers[self.settings.header] = ctx.request_id
        return None

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if ctx.request_id:
            headers[self.settings.header] = ctx.request_id
