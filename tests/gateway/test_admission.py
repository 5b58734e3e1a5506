"""Admission: never more requests in flight at an upstream than its slots; the rest wait
by tier priority, bounded in number and time, and leave at once when their client does."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.upstreams import LOADING
from gateway.waitqueue import WaitQueue
from tests.support.auth import sha256
from tests.support.gateways import gateway_config
from tests.support.metrics import scrape, value
from tests.support.replicas import access_lines, settle, start_fakes
from tests.support.usage import usage_settings, wait_for_rows
from tests.support.waiting import eventually

FREE, PREMIUM = "free-key-for-the-admission-tests-0123456789", "premium-key-0123456789abcdef01"
TIERS = {"free": {}, "premium": {"priority": 5}}


def chat(content: str = "hi", delay: float = 0.0) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake", "messages": [{"role": "user", "content": content}]}
    if delay:
        body["fake"] = {"first_byte_delay": delay}
    return body


async def gateway(
    aiohttp_client: Any,
    tmp_path: Path,
    urls: list[str],
    slots: int = 1,
    tiers: dict[str, Any] = TIERS,
    **upstream: Any,
) -> TestClient[Any, Any]:
    keys = [
        {"hash": sha256(FREE), "owner": "f", "tier": "free"},
        {"hash": sha256(PREMIUM), "owner": "p", "tier": "premium"},
    ]
    config = gateway_config(
        urls[0],
        models={"fake": {"upstreams": urls, "slots": slots}},
        upstream=upstream,
        storage={"data_dir": str(tmp_path)},
        tiers=tiers,
        policies=[{"type": "auth", "api_keys": False, "static_keys": keys}],
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


async def post(client: TestClient[Any, Any], body: dict[str, Any], key: str = FREE) -> Any:
    resp = await client.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    return resp.status, resp.headers.get("Retry-After"), await resp.json()


def depth(client: TestClient[Any, Any]) -> int:
    return len(client.app[STATE].pool.waiting["fake"])


async def queued(client: TestClient[Any, Any], n: int) -> None:
    await eventually(lambda: depth(client) == n)


def busy(answer: Any) -> None:
    status, retry_after, body = answer
    assert status == 503
    assert (body["error"]["code"], body["error"]["type"]) == ("server_busy", "server_error")
    assert int(retry_after) >= 1


async def test_never_more_requests_at_the_upstream_than_its_slots(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await gateway(aiohttp_client, tmp_path, urls, slots=2)
    answers = await asyncio.gather(*(post(client, chat(delay=0.05), PREMIUM) for _ in range(12)))
    assert [status for status, _, _ in answers] == [200] * 12
    assert fake.max_in_flight == 2
    assert depth(client) == 0
    samples = await scrape(client)
    assert value(samples, "llama_gateway_queue_depth", model="fake") == 0
    waited = value(samples, "llama_gateway_queue_seconds_count", model="fake", tier="premium")
    assert 0 < waited <= 10


async def test_premium_requests_queued_after_free_ones_are_served_first(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await gateway(aiohttp_client, tmp_path, urls)
    holder = asyncio.create_task(post(client, chat("holder", delay=0.2)))
    await eventually(lambda: fake.in_flight == 1)
    waiting = [asyncio.create_task(post(client, chat(f"free{i}"))) for i in range(2)]
    await queued(client, 2)
    waiting += [asyncio.create_task(post(client, chat(f"premium{i}"), PREMIUM)) for i in range(2)]
    await queued(client, 4)
    await holder
    answers = await asyncio.gather(*waiting)
    assert [status for status, _, _ in answers] == [200] * 4
    order = [r["messages"][0]["content"] for r in fake.requests]
    assert order == ["holder", "premium0", "premium1", "free0", "free1"]
    assert fake.max_in_flight == 1
    await settle(client)
    lines = access_lines(capsys.readouterr().err)
    queued_ms = {line["tier"]: line["queued_ms"] for line in lines if line["queued_ms"]}
    assert set(queued_ms) == {"free", "premium"}
    assert [line["queued_ms"] is None for line in lines].count(True) == 1  # the holder


async def test_a_full_queue_is_answered_server_busy_at_once(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await gateway(aiohttp_client, tmp_path, urls, admission={"max_queue": 1})
    holder = asyncio.create_task(post(client, chat("holder", delay=0.2)))
    await eventually(lambda: fake.in_flight == 1)
    second = asyncio.create_task(post(client, chat("second")))
    await queued(client, 1)
    busy(await post(client, chat("third"), PREMIUM))
    assert [(await holder)[0], (await second)[0]] == [200, 200]
    assert [r["messages"][0]["content"] for r in fake.requests] == ["holder", "second"]


async def test_a_wait_past_the_tiers_max_queue_seconds_is_answered_server_busy(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    tiers = {"free": {"max_queue_seconds": 0.05}, "premium": {"priority": 5}}
    client = await gateway(aiohttp_client, tmp_path, urls, tiers=tiers)
    holder = asyncio.create_task(post(client, chat("holder", delay=1.0), PREMIUM))
    await eventually(lambda: fake.in_flight == 1)
    busy(await post(client, chat("late")))
    assert depth(client) == 0
    assert (await holder)[0] == 200
    assert len(fake.requests) == 1


async def test_a_client_that_hangs_up_while_queued_leaves_the_queue(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await gateway(aiohttp_client, tmp_path, urls)
    holder = asyncio.create_task(post(client, chat("holder", delay=0.3)))
    await eventually(lambda: fake.in_flight == 1)
    leaving = asyncio.create_task(post(client, chat("leaving")))
    await queued(client, 1)
    leaving.cancel()  # closes its connection: the gateway's handler is cancelled
    await queued(client, 0)
    assert (await holder)[0] == 200
    assert (await post(client, chat("after")))[0] == 200
    assert [r["messages"][0]["content"] for r in fake.requests] == ["holder", "after"]
    samples = await scrape(client)
    assert value(samples, "llama_gateway_queue_depth", model="fake") == 0
    assert client.app[STATE].pool.by_model["fake"][0].in_flight == 0


async def test_failover_takes_a_slot_on_the_other_replica(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1000)  # resets every connection before the response head
    client = await gateway(aiohttp_client, tmp_path, urls, breaker={"enabled": False})
    answers = await asyncio.gather(*(post(client, chat(delay=0.05)) for _ in range(6)))
    assert [status for status, _, _ in answers] == [200] * 6
    assert good.max_in_flight == 1
    assert len(good.requests) == 6
    assert [u.in_flight for u in client.app[STATE].pool.by_model["fake"]] == [0, 0]


def test_retry_after_follows_the_observed_service_rate() -> None:
    queue = WaitQueue([])
    assert queue.retry_after(3) == 3  # nothing observed yet: a second per place
    queue.completed(100.0)  # after an idle spell: starts the clock only
    for i in range(1, 30):
        queue.completed(100.0 + 4 * i)  # one completion every 4 s
    assert queue.retry_after(1) == 4
    assert queue.retry_after(10) == 40
    for i in range(1, 60):
        queue.completed(220.0 + 0.1 * i)  # now ten a second
    assert queue.retry_after(1) == 1  # never under a second
    assert 5 <= queue.retry_after(50) <= 6  # the average nears 0.1 s


async def test_the_usage_row_records_the_time_queued(
    aiohttp_client: Any, aiohttp_server: Any, pg_url: str, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    config = gateway_config(
        urls[0],
        models={"fake": {"upstreams": urls, "slots": 1}},
        storage={"database_url": pg_url, "data_dir": str(tmp_path)},
        policies=[usage_settings()],
    )
    client = await aiohttp_client(create_app(config))
    holder = asyncio.create_task(client.post("/v1/chat/completions", json=chat("h", delay=0.3)))
    await eventually(lambda: fake.in_flight == 1)
    started = time.monotonic()
    assert (await client.post("/v1/chat/completions", json=chat("second"))).status == 200
    waited_ms = (time.monotonic() - started) * 1000
    assert (await holder).status == 200
    rows = sorted(await wait_for_rows(pg_url, 2), key=lambda row: row["started_at"])
    assert rows[0]["queued_ms"] is None  # the holder found its slot free
    assert 0 < rows[1]["queued_ms"] <= waited_ms


async def test_an_upstream_back_takes_a_waiter_at_once(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Not at the next release: the holder's answer is still a second away."""
    fakes, urls = await start_fakes(aiohttp_server, 2)
    fakes[1].loading = True
    client = await gateway(aiohttp_client, tmp_path, urls)
    pool = client.app[STATE].pool
    await eventually(lambda: pool.by_model["fake"][1].state == LOADING)
    holder = asyncio.create_task(post(client, chat("holder", delay=1.0)))
    await eventually(lambda: fakes[0].in_flight == 1)
    waiter = asyncio.create_task(post(client, chat("waiter")))
    await queued(client, 1)
    fakes[1].loading = False  # its next probe finds it healthy
    assert (await waiter)[0] == 200
    assert not holder.done()
    assert [r["messages"][0]["content"] for r in fakes[1].requests] == ["waiter"]
    assert (await holder)[0] == 200


async def test_more_slots_read_from_props_take_waiters_at_once(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    fake.total_slots = 1
    config = gateway_config(urls[0], storage={"data_dir": str(tmp_path)})
    client = await aiohttp_client(create_app(config))
    (upstream,) = client.app[STATE].pool.by_model["fake"]
    await eventually(lambda: upstream.limit == 1)
    holder = asyncio.create_task(client.post("/v1/chat/completions", json=chat("h", delay=1.0)))
    await eventually(lambda: fake.in_flight == 1)
    waiter = asyncio.create_task(client.post("/v1/chat/completions", json=chat("waiter")))
    await queued(client, 1)
    fake.total_slots = 2
    assert (await waiter).status == 200
    assert not holder.done()
    assert fake.max_in_flight == 2
    assert (await holder).status == 200
