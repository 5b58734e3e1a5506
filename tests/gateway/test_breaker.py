"""Circuit breakers in a running gateway: real traffic opens them, an open one gets no
traffic, a half-open one exactly one trial among concurrent requests, and the gauge and
the log show each state."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.circuit import CLOSED, HALF_OPEN, OPEN
from tests.support.gateways import CHAT
from tests.support.metrics import scrape, value
from tests.support.replicas import replicated, start_fakes, upstreams
from tests.support.waiting import eventually

BREAKER = {"failures": 2, "cooldown_seconds": 0.3}
# Unbounded slots: a request waiting for one would go to the replica the trial took back.
UNBOUNDED = {"admission": {"enabled": False}}


async def state(client: TestClient[Any, Any], upstream: str) -> float:
    samples = await scrape(client)
    return value(samples, "llama_gateway_upstream_circuit_state", upstream=upstream, model="fake")


async def chat(client: TestClient[Any, Any], body: dict[str, Any] = CHAT) -> int:
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.read()
    return resp.status


async def test_a_failing_replica_is_cut_off_tried_once_and_taken_back(
    aiohttp_client: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway.circuit")
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1000)
    client = await replicated(aiohttp_client, urls, upstream={"breaker": BREAKER, **UNBOUNDED})
    assert await state(client, urls[0]) == CLOSED
    while upstreams(client)[0].circuit.state != OPEN:
        assert await chat(client) == 200
    assert len(bad.received) == 2  # the configured failures, then no more
    assert await state(client, urls[0]) == OPEN
    for _ in range(5):
        assert await chat(client) == 200
    assert len(bad.received) == 2
    bad.fail(0, 0)  # it has recovered
    await eventually(lambda: upstreams(client)[0].circuit.current() == HALF_OPEN)
    assert await state(client, urls[0]) == HALF_OPEN
    # Slow answers: the trial is still on its way while the others are picked.
    slow = {**CHAT, "fake": {"first_byte_delay": 0.2}}
    statuses = await asyncio.gather(*(chat(client, slow) for _ in range(6)))
    assert statuses == [200] * 6
    assert len(bad.received) == 3  # exactly one trial
    assert await state(client, urls[0]) == CLOSED
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.circuit"] == [
        f"circuit of upstream {urls[0]} is open",
        f"circuit of upstream {urls[0]} is half-open",
        f"circuit of upstream {urls[0]} is closed",
    ]
    assert len(good.received) > 0


async def test_a_failed_trial_opens_it_again_and_the_request_still_succeeds(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(503, 1000)
    client = await replicated(aiohttp_client, urls, upstream={"breaker": BREAKER})
    while upstreams(client)[0].circuit.state != OPEN:
        assert await chat(client) == 200
    await eventually(lambda: upstreams(client)[0].circuit.current() == HALF_OPEN)
    assert await chat(client) == 200  # the trial failed over
    assert (len(bad.received), len(good.received)) == (3, 3)
    assert await state(client, urls[0]) == OPEN


async def test_client_errors_and_hang_ups_do_not_open_it(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (fake,), urls = await start_fakes(aiohttp_server, 1)
    client = await replicated(aiohttp_client, urls, upstream={"breaker": {"failures": 1}})
    assert await chat(client, {**CHAT, "fake": {"status": 400}}) == 400
    slow = {**CHAT, "fake": {"first_byte_delay": 5}}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post("/v1/chat/completions", json=slow), 0.2)
    await eventually(lambda: fake.cancelled == 1)
    assert upstreams(client)[0].circuit.current() == CLOSED
    assert await chat(client) == 200


async def test_with_every_circuit_open_the_answer_is_the_usual_503(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (bad,), urls = await start_fakes(aiohttp_server, 1)
    bad.fail(500, 1000)
    breaker = {"failures": 1, "cooldown_seconds": 60}
    client = await replicated(aiohttp_client, urls, upstream={"breaker": breaker})
    assert await chat(client) == 500
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert "circuit open" in error["message"]
    assert len(bad.received) == 1


async def test_a_body_that_cannot_be_sent_does_not_take_the_half_open_trial(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    (bad, _good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1000)
    client = await replicated(aiohttp_client, urls, upstream={"breaker": BREAKER})
    while upstreams(client)[0].circuit.state != OPEN:
        assert await chat(client) == 200
    bad.fail(0, 0)
    await eventually(lambda: upstreams(client)[0].circuit.current() == HALF_OPEN)
    # Nested deeper than the body can be written out again: refused with a 400 before any
    # upstream is picked, so the half-open circuit's trial is still there to take.
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    body = {**CHAT, "stream": True, "x": deep}  # a stream: its body is written out again
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    await resp.read()
    for _ in range(4):
        assert await chat(client) == 200
    assert upstreams(client)[0].circuit.current() == CLOSED
