"""Usage accounting (SPEC F5): one record per request that entered the policy chain.

Place it right after `request_id` and before `auth`: it has no `on_request`, and the
chain calls `on_complete` for every policy placed before the one that answered, so
requests refused by auth or a rate limit are recorded too. `on_complete` builds the row
from the RequestContext and hands it to the background writer (no I/O, no await); the
writer is shared across policy reloads, so a reload neither loses nor doubles it.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
from aiohttp import web
from pydantic import Field

from gateway.context import RequestContext
from gateway.credentials import SecretHash, bearer_token, hash_secret, printable_ascii
from gateway.errors import GatewayError
from gateway.policy import Check, Policy, PolicyEnv, PolicySettings, RouteHandler
from policies.usage.journal import Journal
from policies.usage.metrics import UsageMetrics
from policies.usage.record import Price, RowBuilder
from policies.usage.report import ReportError, as_json, parse_time
from policies.usage.store import PostgresUsageStore, open_usage_store
from policies.usage.writer import UsageWriter, WriterOptions

log = logging.getLogger("policies.usage")

RESOURCE = "usage_writer"
ADMIN_PATH = "/admin/usage"


class AdminSettings(PolicySettings):
    """Who may read `GET /admin/usage`: bearer tokens given as hashes, or from the environment."""

    key_hashes: list[SecretHash] = Field(default_factory=list)
    token_env: str | None = None

    def hashes(self) -> list[str]:
        found = list(self.key_hashes)
        token = os.environ.get(self.token_env) if self.token_env else None
        if token:
            found.append(hash_secret(token))
        return found


class UsageSettings(PolicySettings):
    # Per model (or "*" for every other model): the cost recorded with each request.
    prices: dict[str, Price] = Field(default_factory=dict)
    admin: AdminSettings | None = None
    # The writer's settings take effect at start-up (the writer outlives reloads).
    batch_size: int = Field(500, ge=1, le=50_000)
    flush_seconds: float = Field(1.0, gt=0, le=60)
    queue_size: int = Field(20_000, ge=1)
    write_timeout_seconds: float = Field(5.0, gt=0)
    shutdown_seconds: float = Field(10.0, gt=0)
    retry_initial_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    # Rows older than this many days are dropped (PostgreSQL: whole monthly partitions,
    # once all of a month is past it; SQLite: the rows). None: kept for ever.
    retention_days: int | None = Field(None, ge=1)

    def writer_options(self) -> WriterOptions:
        return WriterOptions(
            batch_size=self.batch_size,
            flush_seconds=self.flush_seconds,
            queue_size=self.queue_size,
            write_timeout_seconds=self.write_timeout_seconds,
            shutdown_seconds=self.shutdown_seconds,
            retry_initial_seconds=self.retry_initial_seconds,
            retry_max_seconds=self.retry_max_seconds,
        )


class UsagePolicy(Policy):
    name = "usage"
    Settings = UsageSettings
    settings: UsageSettings

    def __init__(self, settings: UsageSettings, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        self.rows = RowBuilder(settings.prices)
        self.writer: UsageWriter | None = None
        self.metrics = UsageMetrics(env.metrics)  # at build time: its series exist from the start
        self._admin = settings.admin.hashes() if settings.admin else []

    @classmethod
    def problems(cls, settings: UsageSettings, env: PolicyEnv) -> list[str]:
        found = []
        admin = settings.admin
        token = os.environ.get(admin.token_env) if admin and admin.token_env else None
        if admin is not None and admin.token_env and not token:
            found.append(f"admin.token_env: environment variable {admin.token_env} is not set")
        elif admin is not None and token and not printable_ascii(token):
            found.append(
                f"admin.token_env: the token in {admin.token_env} is not printable ASCII, so "
                "no request could present it; use letters, digits and punctuation"
            )
        return found

    async def start(self) -> None:
        storage = self.env.config.storage
        options = self.settings.writer_options()

        async def create() -> UsageWriter:
            store = open_usage_store(
                storage.database_url, storage.sqlite_path, self.settings.retention_days
            )
            writer = UsageWriter(store, Journal(storage.data_path), self.metrics, options)
            await writer.start()
            return writer

        self.writer = await self.env.resources.get(RESOURCE, create, lambda w: w.close())
        unpriced = set(self.rows.prices) - set(self.env.config.models)
        if unpriced and self.env.config.models:
            log.warning("usage prices name models that are not configured: %s", sorted(unpriced))

    async def readiness(self) -> Mapping[str, Check]:
        store = self.writer.store if self.writer is not None else None
        if not isinstance(store, PostgresUsageStore):
            return {}
        # Not required: while the database is down, rows wait in the journal.
        return {"usage:database": Check(await store.ping(), required=False)}

    async def on_complete(self, ctx: RequestContext) -> None:
        if self.writer is not None:
            self.writer.submit(self.rows.build(ctx))

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        return {("GET", ADMIN_PATH): self.admin_usage}

    async def admin_usage(self, request: web.Request) -> web.StreamResponse:
        """`GET /admin/usage?since=24h&until=...&by=model`: the report as JSON."""
        try:
            self._check_admin(request)
            query = request.query
            since = parse_time(query.get("since", "24h"), param="since")
            until = (
                parse_time(query["until"], param="until") if "until" in query else datetime.now(UTC)
            )
            by = query.get("by") or None
            body = await self._report(since, until, by)
        except ReportError as exc:
            err = GatewayError(400, str(exc), code="invalid_report_parameter", param=exc.param)
            return err.response()
        except GatewayError as err:
            return err.response()
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _check_admin(self, request: web.Request) -> None:
        if not self._admin:
            raise GatewayError(
                403,
                "The usage admin endpoint is off: set admin.key_hashes or admin.token_env "
                "in the usage policy.",
                type="permission_error",
                code="permission_denied",
            )
        token = bearer_token(request.headers.get("Authorization", ""))
        if (
            token is None
            or not printable_ascii(token)
            or not _known(hash_secret(token), self._admin)
        ):
            raise GatewayError(
                401,
                "Send an admin token as 'Authorization: Bearer <token>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def _report(self, since: datetime, until: datetime, by: str | None) -> dict[str, object]:
        writer = self.writer
        assert writer is not None, "routes are served once the chain has started"
        try:
            await writer.store.connect()
            rows, total = await writer.store.report(since, until, by)
        except writer.store.errors as exc:  # a bad parameter (ReportError) passes through
            raise GatewayError(
                503,
                f"The usage database cannot answer right now ({type(exc).__name__}); "
                "retry shortly.",
                type="server_error",
                code="usage_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        body = as_json(rows, total, since, until, by)
        body["pending"] = {
            "records": writer.queued(),
            "journal_bytes": writer.journal.pending_bytes,
        }
        return body


def _known(digest: str, allowed: list[str]) -> bool:
    return any(hmac.compare_digest(digest, one) for one in allowed)
