"""Usage tests' settings, rows and writers, and the rows PostgreSQL holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.policy import Policy
from policies.usage.journal import Journal
from policies.usage.metrics import UsageMetrics
from policies.usage.policy import UsagePolicy
from policies.usage.record import UsageRow
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import UsageStore
from policies.usage.writer import UsageWriter, WriterOptions
from tests.support.auth import sha256
from tests.support.gateways import CHAT
from tests.support.waiting import eventually

STREAM = {**CHAT, "stream": True}


STATIC_KEY = "static-key-of-the-usage-tests-0123456789"


ADMIN_TOKEN = "admin-token-of-the-usage-tests-0123456789"


PRICES = {"fake": {"prompt_per_million": 1000.0, "completion_per_million": 2000.0}}


def usage_settings(**settings: Any) -> dict[str, Any]:
    return {
        "type": "usage",
        "prices": PRICES,
        "flush_seconds": 0.05,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "write_timeout_seconds": 2,
        "admin": {"key_hashes": [sha256(ADMIN_TOKEN)]},
        **settings,
    }


AUTH = {
    "type": "auth",
    "api_keys": False,
    "static_keys": [{"hash": sha256(STATIC_KEY), "owner": "ops", "tier": "premium"}],
}


class Scripted(Policy):
    """Stands in for a rate limit (429) and a policy answering itself, on request."""

    name = "scripted"

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        action = ctx.request.headers.get("X-Scripted")
        if action == "limit":
            raise GatewayError(429, "Rate limit reached.", code="rate_limit_exceeded")
        if action == "answer":
            ctx.model = "fake"
            ctx.usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
            return Reply(200, b'{"object": "chat.completion", "choices": []}')
        return None


UsageGateway = Callable[..., Awaitable[TestClient[Any, Any]]]


def writer_of(client: TestClient[Any, Any]) -> UsageWriter:
    for policy in client.app[STATE].runtime.chain.policies:
        if isinstance(policy, UsagePolicy):
            assert policy.writer is not None
            return policy.writer
    raise AssertionError("no usage policy in the chain")


async def pg_rows(pg_url: str) -> list[dict[str, Any]]:
    """Every usage row, in insertion order of their ids; none before the writer migrated."""
    conn = await asyncpg.connect(pg_url)
    try:
        return [dict(r) for r in await conn.fetch("SELECT * FROM usage_records ORDER BY id")]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def wait_for_rows(pg_url: str, count: int) -> list[dict[str, Any]]:
    """Poll until at least `count` rows are in."""

    async def enough() -> bool:
        return len(await pg_rows(pg_url)) >= count

    await eventually(enough)
    return await pg_rows(pg_url)


NOW = datetime.now(UTC)


def row(n: int, **fields: Any) -> UsageRow:
    started = (NOW - timedelta(minutes=10)).timestamp() + n
    values: dict[str, Any] = {
        "id": f"id-{n}",
        "request_id": f"req-{n}",
        "started_at": started,
        "finished_at": started + 0.5,
        "principal": "key:aaa",
        "key_id": "aaa",
        "subject": "alice",
        "tier": "free",
        "model": "m1",
        "endpoint": "chat.completions",
        "upstream": "http://u",
        "status": 200,
        "outcome": "ok",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached": False,
        "streamed": False,
        "disconnected": False,
        "latency_ms": float(n),
        "ttft_ms": 1.0,
        "cost": 0.25,
        "attempts": 1,
        "queued_ms": None,
        "cached_tokens": None,
        "variant": None,
    }
    values.update(fields)
    return UsageRow(**values)


# m1: 20 rows by alice with latencies 1..20, one an upstream error mid-stream;
# m2: 7 rows by bob (no key: a JWT caller), two refused with 429;
# plus one old row outside every range asked below.
ROWS = [
    *(row(n, outcome="upstream_error" if n == 3 else "ok") for n in range(1, 21)),
    *(
        row(
            100 + n,
            model="m2",
            subject="bob",
            key_id=None,
            principal="jwt:bob",
            tier="premium",
            latency_ms=[3.5, 8.0, 1.25, 40.0, 2.0, 9.0, 7.0][n],
            status=429 if n < 2 else 200,
            outcome="rejected" if n < 2 else "ok",
            cost=1.0,
        )
        for n in range(7)
    ),
    row(999, started_at=(NOW - timedelta(days=3)).timestamp(), model="old"),
]


FAST = WriterOptions(
    batch_size=10,
    flush_seconds=0.05,
    write_timeout_seconds=2,
    shutdown_seconds=5,
    retry_initial_seconds=0.05,
    retry_max_seconds=0.2,
)


def writer(store: UsageStore, tmp_path: Path, **options: float) -> UsageWriter:
    chosen = WriterOptions(**{**FAST.__dict__, **options})
    return UsageWriter(store, Journal(tmp_path / "data"), UsageMetrics(Metrics()), chosen)


def sample(metrics: UsageMetrics, destination: str) -> float:
    value = metrics.registry.get_sample_value(
        "llama_gateway_usage_records_total", {"destination": destination}
    )
    return value or 0.0


async def count(store: SqliteUsageStore) -> int:
    """The rows committed, read between two of the writer's transactions: on its connection
    in the middle of one, a read sees rows not yet committed, nor counted in the metrics."""
    async with store._lock:
        rows = await store._db().execute_fetchall("SELECT count(*) FROM usage_records")
    return int(next(iter(rows))[0])
