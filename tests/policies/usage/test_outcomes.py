"""Every request that entered the chain leaves exactly one row, whatever its outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from policies.usage.policy import UsagePolicy
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT
from tests.support.usage import (
    AUTH,
    STATIC_KEY,
    STREAM,
    UsageGateway,
    pg_rows,
    usage_settings,
    wait_for_rows,
    writer_of,
)
from tests.support.waiting import eventually

KEY = {"Authorization": f"Bearer {STATIC_KEY}"}


async def send(client: TestClient[Any, Any], rid: str, body: Any = None, **headers: str) -> int:
    headers = {"X-Request-ID": rid, **headers}
    if body is None:
        resp = await client.get("/v1/models", headers=headers)
    else:
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    await resp.read()
    return resp.status


async def hang_up(client: TestClient[Any, Any], fake: FakeLlama) -> None:
    body = {**STREAM, "fake": {"chunks": 100, "delay": 0.02}}
    headers = {"X-Request-ID": "gone", **KEY}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    await resp.content.readuntil(b"\n\n")
    resp.close()
    await eventually(lambda: fake.cancelled > 0)  # the gateway let go of the upstream


@pytest.mark.usefixtures("scripted")
async def test_every_outcome_leaves_exactly_one_row_with_its_fields(
    usage_gateway: UsageGateway, pg_url: str, fake: FakeLlama
) -> None:
    chain = [{"type": "request_id"}, usage_settings(), AUTH, {"type": "scripted"}]
    client = await usage_gateway(*chain, database_url=pg_url)
    began = datetime.now(UTC)
    assert await send(client, "ok", CHAT, **KEY) == 200
    assert await send(client, "streamed", STREAM, **KEY) == 200
    assert await send(client, "upstream-500", {**CHAT, "fake": {"status": 500}}, **KEY) == 500
    broken = {**STREAM, "fake": {"error_after": 2}}
    assert await send(client, "broken-stream", broken, **KEY) == 200
    assert await send(client, "no-key", CHAT) == 401
    assert await send(client, "limited", CHAT, **KEY, **{"X-Scripted": "limit"}) == 429
    assert await send(client, "answered", CHAT, **KEY, **{"X-Scripted": "answer"}) == 200
    assert await send(client, "models", None, **KEY) == 200
    assert await send(client, "unknown-model", {**CHAT, "model": "nope"}, **KEY) == 404
    await hang_up(client, fake)
    await client.close()  # shutdown flushes the writer

    rows = {row["request_id"]: row for row in await pg_rows(pg_url)}
    assert len(rows) == 10
    ok = rows["ok"]
    assert (ok["status"], ok["outcome"], ok["streamed"], ok["cached"]) == (200, "ok", False, False)
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (5, 3)
    assert ok["cost"] == pytest.approx((5 * 1000 + 3 * 2000) / 1e6)
    assert (ok["principal"], ok["subject"], ok["tier"]) == ("static:ops", "ops", "premium")
    assert (ok["model"], ok["endpoint"]) == ("fake", "chat.completions")
    assert ok["upstream"].startswith("http://127.0.0.1:")
    assert began - timedelta(seconds=1) < ok["started_at"] <= ok["finished_at"]
    assert ok["latency_ms"] >= ok["ttft_ms"] > 0
    streamed = rows["streamed"]
    assert (streamed["streamed"], streamed["prompt_tokens"], streamed["completion_tokens"]) == (
        True,
        5,
        3,
    )
    assert streamed["ttft_ms"] is not None
    assert (rows["upstream-500"]["status"], rows["upstream-500"]["outcome"]) == (
        500,
        "upstream_error",
    )
    assert rows["broken-stream"]["outcome"] == "upstream_error"
    no_key = rows["no-key"]
    assert (no_key["status"], no_key["outcome"], no_key["principal"]) == (401, "rejected", None)
    assert (no_key["prompt_tokens"], no_key["cost"], no_key["ttft_ms"]) == (0, 0.0, None)
    assert (rows["limited"]["status"], rows["limited"]["tier"]) == (429, "premium")
    answered = rows["answered"]  # no policy answers from a cache: `cached` is false
    assert (answered["cached"], answered["upstream"], answered["prompt_tokens"]) == (False, None, 7)
    assert (rows["models"]["endpoint"], rows["models"]["status"]) == ("models", 200)
    assert (rows["unknown-model"]["status"], rows["unknown-model"]["model"]) == (404, "nope")
    gone = rows["gone"]
    assert (gone["outcome"], gone["disconnected"], gone["streamed"]) == (
        "client_disconnected",
        True,
        True,
    )


async def test_a_client_reusing_a_request_id_still_gets_a_row_per_request(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    client = await usage_gateway(database_url=pg_url)
    for _ in range(3):
        assert await send(client, "same-id", CHAT) == 200
    await client.close()
    rows = await pg_rows(pg_url)
    assert [r["request_id"] for r in rows] == ["same-id"] * 3
    assert len({r["id"] for r in rows}) == 3


async def test_rows_reach_the_database_in_the_background(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    client = await usage_gateway(database_url=pg_url)
    for i in range(5):
        assert await send(client, f"r{i}", CHAT) == 200
    await wait_for_rows(pg_url, 5)  # written every flush_seconds, no shutdown needed
    await eventually(lambda: writer_of(client).healthy)
    await client.close()
    assert len(await pg_rows(pg_url)) == 5


async def test_a_policy_reload_keeps_the_one_writer(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    client = await usage_gateway(database_url=pg_url)
    writer = writer_of(client)
    runtime = client.app[STATE].runtime
    assert await runtime.reload("test")
    new = next(p for p in runtime.chain.policies if isinstance(p, UsagePolicy))
    assert new.writer is writer
    assert await send(client, "after-reload", CHAT) == 200
    await client.close()
    assert [r["request_id"] for r in await pg_rows(pg_url)] == ["after-reload"]


async def test_without_a_database_url_rows_go_to_the_embedded_store(
    usage_gateway: UsageGateway, tmp_path: Any
) -> None:
    client = await usage_gateway()
    for i in range(4):
        assert await send(client, f"s{i}", {**CHAT, "stream": i % 2 == 0}) == 200
    writer = writer_of(client)
    await writer.store.connect()
    since = datetime.now(UTC) - timedelta(hours=1)

    async def all_in() -> bool:
        return (await writer.store.report(since, datetime.now(UTC), None))[1].requests == 4

    await eventually(all_in)
    rows, _ = await writer.store.report(since, datetime.now(UTC), "model")
    assert [(r.group, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("fake", 4, 20, 12)
    ]
    assert (tmp_path / "data" / "gateway.db").is_file()
