"""Failover: a request whose upstream fails before any byte reached the client is made
again on another replica of its model; never after, never for the client's own errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT
from tests.support.metrics import scrape, value
from tests.support.replicas import DEAD, access_lines, replicated, settle, start_fakes
from tests.support.usage import STREAM, usage_settings, wait_for_rows

NO_BREAKER = {"breaker": {"enabled": False}}
EMBED = {"model": "fake", "input": ["a", "b"]}


async def send(client: TestClient[Any, Any], n: int) -> list[tuple[int, bytes]]:
    """`n` requests in turn: chat, streamed chat and embeddings."""
    answers = []
    for i in range(n):
        path, body = [
            ("/v1/chat/completions", CHAT),
            ("/v1/chat/completions", STREAM),
            ("/v1/embeddings", EMBED),
        ][i % 3]
        resp = await client.post(path, json=body)
        answers.append((resp.status, await resp.read()))
    return answers


async def test_a_replica_that_drops_connections_costs_no_request_an_error(
    aiohttp_client: Any, aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1000)  # resets every connection before the response head
    client = await replicated(aiohttp_client, urls, upstream=NO_BREAKER)
    answers = await send(client, 9)
    assert [status for status, _ in answers] == [200] * 9
    assert all(b"[DONE]" in body for status, body in answers[1::3])
    await settle(client)
    lines = access_lines(capsys.readouterr().err)
    assert {line["upstream"] for line in lines} == {urls[1]}
    retried = [line for line in lines if line["attempts"] == 2]
    assert len(retried) == len(bad.received) > 0
    assert all(line["attempts"] in (1, 2) for line in lines)
    assert len(good.received) == 9
    samples = await scrape(client)
    retries = value(samples, "llama_gateway_upstream_retries_total", model="fake", reason="reset")
    assert retries == len(retried)


async def test_a_dead_replica_costs_no_request_an_error(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (good,), urls = await start_fakes(aiohttp_server, 1)
    client = await replicated(aiohttp_client, [DEAD, *urls])
    answers = await send(client, 6)
    assert [status for status, _ in answers] == [200] * 6
    assert len(good.received) == 6


async def test_a_loading_replica_is_failed_over_and_counted(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (loading, good), urls = await start_fakes(aiohttp_server, 2)
    loading.fail(503, 1)
    client = await replicated(aiohttp_client, urls)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    assert resp.status == 200
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert (len(loading.received), len(good.received)) == (1, 1)
    samples = await scrape(client)
    assert value(samples, "llama_gateway_upstream_retries_total", model="fake", reason="loading")


@pytest.mark.parametrize("on_server_error", [False, True])
async def test_a_500_is_retried_only_when_configured(
    aiohttp_client: Any, aiohttp_server: Any, on_server_error: bool
) -> None:
    (failing, good), urls = await start_fakes(aiohttp_server, 2)
    failing.fail(500, 1)
    retry = {"retry": {"on_server_error": on_server_error}}
    client = await replicated(aiohttp_client, urls, upstream=retry)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    if on_server_error:
        assert resp.status == 200
        assert len(good.received) == 1
    else:  # the upstream's own answer, as it was
        assert resp.status == 500
        assert (await resp.json())["error"]["message"] == "fake server failure"
        assert good.received == []


async def test_a_client_error_is_never_retried(aiohttp_client: Any, aiohttp_server: Any) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await replicated(aiohttp_client, urls)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 400}})
    assert resp.status == 400
    assert sum(len(f.received) for f in fakes) == 1


async def test_a_stream_that_dies_mid_way_is_never_retried(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await replicated(aiohttp_client, urls)
    resp = await client.post("/v1/chat/completions", json={**STREAM, "fake": {"drop_after": 1}})
    assert resp.status == 200
    body = await resp.read()
    last = body.strip().split(b"\n\n")[-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_error"
    assert sum(len(f.received) for f in fakes) == 1


@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
async def test_retries_are_bounded_when_every_replica_fails(
    aiohttp_client: Any, aiohttp_server: Any, attempts: int
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    for fake in fakes:
        fake.fail(0, 1000)
    retry = {"attempts": attempts, "backoff_seconds": 0.01}
    client = await replicated(aiohttp_client, urls, upstream={**NO_BREAKER, "retry": retry})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_error"
    assert (f"({attempts} attempts)" in error["message"]) == (attempts > 1)
    calls = [len(f.received) for f in fakes]
    assert sum(calls) == attempts
    assert max(calls) - min(calls) <= 1  # never the same replica twice in a row


async def test_a_retry_stops_once_its_time_is_spent(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    for fake in fakes:
        fake.fail(0, 1000)
    # The first wait may be up to 60 s: no second retry fits in 0.05 s.
    retry = {"attempts": 10, "total_seconds": 0.05, "backoff_seconds": 60}
    client = await replicated(aiohttp_client, urls, upstream={**NO_BREAKER, "retry": retry})
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    assert sum(len(f.received) for f in fakes) < 10


async def test_every_replica_dead_is_one_clear_error(aiohttp_client: Any) -> None:
    client = await replicated(aiohttp_client, [DEAD, "http://127.0.0.1:7"])
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status in (502, 503)
    assert (await resp.json())["error"]["type"] == "server_error"


async def test_the_usage_row_counts_the_attempts(
    aiohttp_client: Any, aiohttp_server: Any, pg_url: str, tmp_path: Path
) -> None:
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1)
    storage = {"database_url": pg_url, "data_dir": str(tmp_path / "data")}
    client = await replicated(
        aiohttp_client, urls, storage=storage, policies=[usage_settings()], upstream=NO_BREAKER
    )
    for body in (CHAT, CHAT):
        assert (await client.post("/v1/chat/completions", json=body)).status == 200
    rows = await wait_for_rows(pg_url, 2)
    by_attempts = {row["attempts"]: row["upstream"] for row in rows}
    assert by_attempts == {2: urls[1], 1: urls[0]}  # the replica back in turn answers at once
    assert (len(bad.received), len(good.received)) == (2, 1)


async def test_a_large_body_is_sent_whole_on_every_attempt(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    fakes[0].fail(0, 1)
    client = await replicated(aiohttp_client, urls)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    resp = await client.post("/v1/chat/completions", data=io.BytesIO(orjson.dumps(big)))
    assert resp.status == 200
    sent: list[FakeLlama] = [f for f in fakes if f.received]
    assert [orjson.loads(f.received[-1][1]) for f in sent] == [big, big]
