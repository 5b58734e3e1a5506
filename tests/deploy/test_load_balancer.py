"""The compose stack's HAProxy configuration, run for real in front of two gateway
processes sharing Redis and PostgreSQL: streams pass event by event, one rate limit holds
across both replicas, and a replica stopped mid-run fails no request."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.auth import sha256
from tests.support.deploy import tool
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT
from tests.support.load_balancer import (
    HAPROXY_CFG,
    Replica,
    compose_server_settings,
    haproxy,
    replica_of,
    replicas,
    stop,
)
from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix
from tests.support.waiting import eventually

FREE, PREMIUM = "sk-lb-free-key", "sk-lb-premium-key"
FREE_PER_MINUTE = 5


def replica_config(fake_url: str, pg_url: str, prefix: str, data_dir: Path) -> dict[str, Any]:
    return {
        "server": {**compose_server_settings(), "host": "127.0.0.1", "shutdown_grace_seconds": 20},
        "models": {"fake": {"upstreams": [fake_url]}},
        "upstream": {"health_interval_seconds": 0.2},
        "storage": {"redis_url": SHARED_REDIS, "database_url": pg_url, "data_dir": str(data_dir)},
        "logging": {"access_log": False},
        "tiers": {"free": {}, "premium": {}},
        "policies": [
            {"type": "request_id"},
            {"type": "usage"},
            {
                "type": "auth",
                "static_keys": [
                    {"hash": sha256(FREE), "owner": "free-caller", "tier": "free"},
                    {"hash": sha256(PREMIUM), "owner": "premium-caller", "tier": "premium"},
                ],
            },
            {
                "type": "rate_limit",
                "key_prefix": prefix,
                "tiers": {"free": {"requests_per_minute": FREE_PER_MINUTE}},
            },
        ],
    }


class Stack:
    def __init__(self, url: str, gateways: list[Replica], ids: list[str], fake: FakeLlama) -> None:
        self.url, self.gateways, self.fake = url, gateways, fake
        self.ids = ids  # each gateway's request ID prefix


@pytest.fixture
async def stack(
    fake: FakeLlama, fake_url: str, pg_url: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    binary = tool("haproxy", "apt-get install -y haproxy")
    prefix = unique_prefix()
    configs = [replica_config(fake_url, pg_url, prefix, tmp_path / f"data-{n}") for n in (1, 2)]
    try:
        async with replicas(configs, tmp_path) as gateways, aiohttp.ClientSession() as session:
            ids = []
            for gateway in gateways:  # HAProxy's first checks then find both ready
                await eventually(lambda g=gateway: is_ready(session, g.url))
                async with session.get(gateway.url + "/v1/models", headers=bearer(PREMIUM)) as r:
                    ids.append(replica_of(r.headers))
            async with haproxy(binary, gateways, tmp_path) as url:
                yield Stack(url, gateways, ids, fake)
    finally:
        drop_keys(SHARED_REDIS, prefix)


async def is_ready(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(url + "/ready") as resp:
        return resp.status == 200


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_stream_passes_event_by_event(stack: Stack) -> None:
    # The fake sends three events, a delay apart, then holds the stream open: a balancer
    # that buffered would hand over nothing while the stream lasts.
    body = {**CHAT, "stream": True, "fake": {"chunks": 10, "delay": 0.05, "hang_after": 3}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url + "/v1/chat/completions", json=body, headers=bearer(PREMIUM)
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = []
        for _ in range(3):
            events.append(await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 30))
            assert stack.fake.in_flight == 1  # the upstream's stream is still open
        assert all(e.startswith(b"data: {") for e in events)
        assert b"tok1" in events[2]


async def test_one_rate_limit_holds_across_both_replicas(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:

        async def call() -> tuple[int, str]:
            url = stack.url + "/v1/chat/completions"
            async with session.post(url, json=CHAT, headers=bearer(FREE)) as resp:
                await resp.read()
                return resp.status, replica_of(resp.headers)

        answers = await asyncio.gather(*(call() for _ in range(4 * FREE_PER_MINUTE)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * FREE_PER_MINUTE + [429] * (3 * FREE_PER_MINUTE)
    assert len({replica for _, replica in answers}) == 2  # both answered


async def test_a_replica_stopped_mid_run_fails_no_request(stack: Stack, pg_url: str) -> None:
    answers: list[tuple[int, str]] = []
    done = asyncio.Event()

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        for i in range(400):  # bounded; the run ends soon after the stopped replica exits
            body = {**CHAT, "stream": (n + i) % 2 == 0, "fake": {"chunks": 4, "delay": 0.02}}
            url = stack.url + "/v1/chat/completions"
            try:
                async with session.post(url, json=body, headers=bearer(PREMIUM)) as resp:
                    await resp.read()
                    answers.append((resp.status, resp.headers["X-Request-ID"]))
            except aiohttp.ClientError as exc:  # what the test is there to find
                answers.append((0, repr(exc)))
            if done.is_set():
                return

    def served_by(replica: int) -> int:
        return sum(rid.startswith(stack.ids[replica]) for _, rid in answers)

    async with aiohttp.ClientSession() as session:
        load = [asyncio.create_task(client(session, n)) for n in range(6)]
        await eventually(lambda: served_by(0) >= 10 and served_by(1) >= 10)
        stack.gateways[0].proc.send_signal(signal.SIGTERM)  # draining, mid-run
        assert await stop(stack.gateways[0]) == 0
        exited = len(answers)
        await eventually(lambda: len(answers) >= exited + 60 or all(t.done() for t in load))
        done.set()
        await asyncio.gather(*load)
    assert [a for a in answers if a[0] != 200] == []
    # After the exit, only the other replica answers (a client may not yet have noted
    # the last answer of the stopped one: at most one each).
    assert not any(rid.startswith(stack.ids[0]) for _, rid in answers[exited + len(load) :])
    assert await stop(stack.gateways[1]) == 0  # its usage rows are in PostgreSQL now
    assert await usage_rows(pg_url, [rid for _, rid in answers]) == len(answers)


async def usage_rows(pg_url: str, request_ids: list[str]) -> int:
    """Rows recorded for these requests: one each, whichever replica answered."""
    conn = await asyncpg.connect(pg_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])", request_ids
        )
    finally:
        await conn.close()
    return count


def test_the_drain_delay_outlasts_haproxys_check_of_ready() -> None:
    server = re.search(
        r"server gateway-1 \S+ check inter (\d+)s fall (\d+)", HAPROXY_CFG.read_text()
    )
    assert server, "haproxy.cfg checks gateway-1 with `check inter Ns fall N`"
    inter, fall = int(server.group(1)), int(server.group(2))
    assert compose_server_settings()["drain_delay_seconds"] >= 2 * inter * fall
