"""The gateway as a process: graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import sse
from tests.support.processes import GatewayProcess, start_gateway
from tests.support.waiting import eventually

STREAM = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gateway_process(fake_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[GatewayProcess] = []

    async def start(grace: float, extra: str = "", drain_delay: float = 0) -> GatewayProcess:
        started.append(await start_gateway(fake_url, tmp_path, grace, extra, drain_delay))
        return started[-1]

    yield start
    for gw in started:
        if gw.proc.returncode is None:
            gw.proc.kill()
            await gw.proc.wait()


async def test_sigterm_lets_in_flight_streams_finish(gateway_process: Any) -> None:
    gw = await gateway_process(grace=10)
    async with aiohttp.ClientSession() as session:
        body = {**STREAM, "fake": {"chunks": 10, "delay": 0.1}}
        async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
            first = await resp.content.readuntil(b"\n\n")
            gw.proc.send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(resp.read(), 10)
        events = sse.events(first + rest)
        assert len(events) == 13  # role, 10 contents, finish, [DONE]
        assert events[-1] == sse.DONE
        assert await asyncio.wait_for(gw.proc.wait(), 10) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(gw.url + "/health")


async def test_during_the_drain_delay_ready_says_503_and_new_requests_are_served(
    gateway_process: Any,
) -> None:
    gw = await gateway_process(grace=5, drain_delay=5)
    # A fresh connection for each call: one the listener accepted after SIGTERM.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def ready_is(status: int) -> bool:
            async with s.get(gw.url + "/ready") as resp:
                return resp.status == status

        await eventually(lambda: ready_is(200))
        gw.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: ready_is(503))
        async with s.get(gw.url + "/ready") as resp:
            assert (resp.status, (await resp.json())["draining"]) == (503, True)
        async with s.post(gw.url + "/v1/chat/completions", json={**STREAM, "stream": False}) as r:
            assert r.status == 200
        assert await asyncio.wait_for(gw.proc.wait(), 30) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(gw.url + "/health")


async def test_streams_longer_than_the_grace_period_are_cut(gateway_process: Any) -> None:
    gw = await gateway_process(grace=0.5)
    async with aiohttp.ClientSession() as session:
        body = {**STREAM, "fake": {"chunks": 1000, "delay": 0.1}}
        async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
            await resp.content.readuntil(b"\n\n")
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(gw.proc.wait(), 10) == 0
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_sighup_reloads_the_policy_document(gateway_process: Any, tmp_path: Path) -> None:
    policies = "policy_reload_seconds: 3600\npolicies: [{type: request_id, header: X-Trace-%s}]\n"
    gw = await gateway_process(grace=1, extra=policies % "A")
    async with aiohttp.ClientSession() as session:
        body = {**STREAM, "stream": False}
        async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert "X-Trace-A" in resp.headers
        text = (tmp_path / "gateway.yaml").read_text().replace("X-Trace-A", "X-Trace-B")
        (tmp_path / "gateway.yaml").write_text(text)
        gw.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
                if "X-Trace-B" in resp.headers:
                    break
            await asyncio.sleep(0.05)
        assert "X-Trace-B" in resp.headers
