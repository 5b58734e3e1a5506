"""Rate limits when Redis fails, restarts or forgets its scripts (a Redis of the test's
own), without Redis (embedded), and across two gateway processes sharing one Redis or one
Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml
from aiohttp.test_utils import TestClient

from policies.rate_limit.store import TOUCH
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory
from tests.support.processes import listening_port, log_tail
from tests.support.rate_limits import (
    CHAT,
    SHARED_REDIS,
    PrivateRedis,
    drop_keys,
    limit_policy,
    private_redis,
    unique_prefix,
)

LOGGER = "policies.rate_limit"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


async def on_redis(
    make_gateway: GatewayFactory, url: str, mode: str, **default: Any
) -> TestClient[Any, Any]:
    policy = limit_policy(unique_prefix(), default=default, failure_mode=mode)
    storage = {"redis_url": url, "redis_timeout_seconds": 0.2}
    return await make_gateway(storage=storage, policies=[policy])


async def post(client: TestClient[Any, Any]) -> Any:
    return await client.post("/v1/chat/completions", json=CHAT)


def records(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == LOGGER)


async def test_redis_down_fails_open_and_recovers(
    make_gateway: GatewayFactory, own_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    client = await on_redis(make_gateway, own_redis.url, "open", requests_per_minute=100)
    assert "x-ratelimit-remaining-requests" in (await post(client)).headers
    own_redis.stop()
    for _ in range(5):
        resp = await post(client)
        assert resp.status == 200
        assert "x-ratelimit-remaining-requests" not in resp.headers
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_gateway_dependency_errors_total{action="fail_open",dependency="redis"} 5.0' in (
        metrics
    )
    assert records(caplog, "failed") == 1  # once per incident, not per request
    own_redis.start()

    async def limited_again() -> bool:
        return "x-ratelimit-remaining-requests" in (await post(client)).headers

    async with asyncio.timeout(10):
        while not await limited_again():  # noqa: ASYNC110 - Redis is another process
            await asyncio.sleep(0.1)
    assert records(caplog, "answers again after") == 1
    # The restarted Redis knew no scripts: they were loaded again.
    assert records(caplog, "lacks the admit script") == 1


async def test_redis_down_fails_closed_without_calling_upstream(
    make_gateway: GatewayFactory, fake: FakeLlama, own_redis: PrivateRedis
) -> None:
    client = await on_redis(make_gateway, own_redis.url, "closed", requests_per_minute=100)
    own_redis.stop()
    resp = await post(client)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    error = (await resp.json())["error"]
    assert (error["type"], error["code"]) == ("server_error", "rate_limiter_unavailable")
    assert fake.requests == []
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_gateway_dependency_errors_total{action="fail_closed",dependency="redis"} 1.0' in (
        metrics
    )


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_that_never_answers_cannot_hang_a_request(
    make_gateway: GatewayFactory,
) -> None:
    async with black_hole() as url:
        client = await on_redis(make_gateway, url, "open", requests_per_minute=1)
        async with asyncio.timeout(5):  # the guard; the bound is redis_timeout_seconds
            answers = [await post(client) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]


async def test_scripts_are_reloaded_after_script_flush(
    make_gateway: GatewayFactory, own_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    client = await on_redis(make_gateway, own_redis.url, "closed", requests_per_minute=3)
    assert (await post(client)).headers["x-ratelimit-remaining-requests"] == "2"
    flusher = own_redis.client()
    flusher.script_flush()
    flusher.close()
    resp = await post(client)
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-requests"] == "1"
    assert records(caplog, "lacks the admit script") == 1


async def test_without_redis_limits_are_kept_in_process(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    policy = limit_policy(unique_prefix(), default={"requests_per_minute": 5, "concurrency": 20})
    client = await make_gateway(policies=[policy])
    answers = await asyncio.gather(*(post(client) for _ in range(20)))
    assert sorted(a.status for a in answers) == [200] * 5 + [429] * 15
    assert len(fake.requests) == 5
    assert {a.headers.get("x-ratelimit-limit-requests") for a in answers} == {"5"}


async def start_gateway(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_GATEWAY_CONFIG"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)  # noqa: ASYNC220
    try:
        async with asyncio.timeout(30):
            while (port := listening_port(log)) is None:
                assert proc.poll() is None, log_tail(log)
                await asyncio.sleep(0.05)  # the fake upstream runs in this loop
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("shared", ["redis", "cluster"])
async def test_two_gateways_sharing_redis_enforce_one_limit(
    fake_url: str, fake: FakeLlama, tmp_path: Path, request: pytest.FixtureRequest, shared: str
) -> None:
    prefix = unique_prefix()
    url = SHARED_REDIS if shared == "redis" else request.getfixturevalue("shared_cluster").url
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": {"fake": {"upstreams": [fake_url]}},
                "storage": {"redis_url": url, "redis_timeout_seconds": 2},
                "logging": {"level": "INFO", "access_log": False},
                "policies": [limit_policy(prefix, default={"requests_per_minute": 30})],
            }
        )
    )
    procs = []
    try:
        for name in ("one", "two"):
            procs.append(await start_gateway(config, tmp_path / f"{name}.log"))
        async with aiohttp.ClientSession() as session:
            for _, url in procs:
                await until_ready(session, url)

            async def call(url: str) -> int:
                async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(call(url) for _, url in procs for _ in range(40)))
        assert statuses.count(200) == 30
        assert statuses.count(429) == 50
        assert len(fake.requests) == 30
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(15)
        drop_keys(SHARED_REDIS, prefix)


async def until_ready(session: aiohttp.ClientSession, url: str) -> None:
    async def ready() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url + "/ready") as resp:
                return resp.status == 200
        return False

    async with asyncio.timeout(20):
        while not await ready():  # noqa: ASYNC110 - the gateway is another process
            await asyncio.sleep(0.05)


async def test_redis_lost_before_completion_keeps_the_answer_and_counts_it(
    make_gateway: GatewayFactory, fake: FakeLlama, own_redis: PrivateRedis
) -> None:
    client = await on_redis(make_gateway, own_redis.url, "open", concurrency=5)
    slow = {**CHAT, "fake": {"first_byte_delay": 0.3}}
    answer = asyncio.ensure_future(client.post("/v1/chat/completions", json=slow))
    async with asyncio.timeout(5):
        while fake.in_flight == 0:  # noqa: ASYNC110 - the fake runs in this loop
            await asyncio.sleep(0.005)
    own_redis.stop()  # admitted; its completion call will find no Redis
    resp = await answer
    assert resp.status == 200

    async def counted() -> bool:
        metrics = await (await client.get("/metrics")).text()
        return 'action="settle_lost",dependency="redis"} 1.0' in metrics

    async with asyncio.timeout(5):
        while not await counted():  # noqa: ASYNC110 - completion runs after the answer
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("mode", "status_when_down"), [("closed", 503), ("open", 200)])
async def test_ready_reports_redis_and_fails_only_when_failing_closed(
    make_gateway: GatewayFactory, own_redis: PrivateRedis, mode: str, status_when_down: int
) -> None:
    client = await on_redis(make_gateway, own_redis.url, mode, requests_per_minute=100)

    async def ready() -> tuple[int, Any]:
        for _ in range(100):  # wait for the first health probe of the fake upstream
            resp = await client.get("/ready")
            body = await resp.json()
            if body["checks"].get("model:fake"):
                return resp.status, body
            await asyncio.sleep(0.02)
        raise AssertionError(f"the upstream never came up: {body}")

    assert await ready() == (200, {"status": "ready", "draining": False, "checks": {
        "model:fake": True, "rate_limit:redis": True}})  # fmt: skip
    own_redis.stop()
    status, body = await ready()
    assert (status, body["checks"]["rate_limit:redis"]) == (status_when_down, False)
    own_redis.start()
    assert (await ready())[0] == 200


def test_touching_a_freed_slot_does_not_take_it_again_on_redis(
    store: redis.Redis, prefix: str
) -> None:
    key = f"{prefix}:{{t}}:concurrency"
    store.zadd(key, {"m1": 1})
    assert store.eval(TOUCH.text, 1, key, "m1", 60_000) == 1
    assert 0 < store.pttl(key) <= 61_000
    store.zrem(key, "m1")
    assert store.eval(TOUCH.text, 1, key, "m1", 60_000) == 0
    assert store.zcard(key) == 0
