"""The gateway as a process: SIGTERM flushes the queue; after SIGKILL the journal is replayed."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from gateway.local import free_port
from tests.gateway.test_server import GatewayProcess, start_gateway
from tests.policies.usage.conftest import (
    CHAT,
    eventually,
    pg_rows,
    usage_settings,
    wait_for_rows,
)


def usage_yaml(database_url: str, data_dir: Path, **settings: Any) -> str:
    policies = [{"type": "request_id"}, usage_settings(**settings)]
    storage = {"database_url": database_url, "data_dir": str(data_dir)}
    # No access log: nobody reads the gateway's stderr after start-up, and a full pipe
    # would stall it.
    return (
        f"storage: {json.dumps(storage)}\npolicies: {json.dumps(policies)}\n"
        "logging: {access_log: false}\n"
    )


async def send(gw: GatewayProcess, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            headers = {"X-Request-ID": f"p{i}"}
            async with session.post(
                gw.url + "/v1/chat/completions", json=CHAT, headers=headers
            ) as resp:
                assert resp.status == 200


async def stop(gw: GatewayProcess, sig: signal.Signals) -> int:
    gw.proc.send_signal(sig)
    return await asyncio.wait_for(gw.proc.wait(), 30)


async def test_sigterm_flushes_every_queued_row(fake_url: str, tmp_path: Path, pg_url: str) -> None:
    # Nothing is written in the background within the test: only shutdown flushes.
    config = usage_yaml(pg_url, tmp_path / "data", flush_seconds=60, batch_size=1000)
    gw = await start_gateway(fake_url, tmp_path, 5, config)
    try:
        await send(gw, 25)
        assert await pg_rows(pg_url) == []
    finally:
        assert await stop(gw, signal.SIGTERM) == 0
    rows = await pg_rows(pg_url)
    assert sorted(r["request_id"] for r in rows) == sorted(f"p{i}" for i in range(25))


def journal_lines(data_dir: Path) -> int:
    path = data_dir / "usage-journal-0.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def test_journal_left_by_a_killed_gateway_is_replayed_on_restart(
    fake_url: str, tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "data"
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    gw = await start_gateway(fake_url, tmp_path, 5, usage_yaml(nobody, data))
    try:
        await send(gw, 30)
        await eventually(lambda: journal_lines(data) == 30)
    finally:
        assert await stop(gw, signal.SIGKILL) == -signal.SIGKILL
    assert journal_lines(data) == 30

    gw = await start_gateway(fake_url, tmp_path, 5, usage_yaml(pg_url, data))
    try:
        await wait_for_rows(pg_url, 30)
        await eventually(lambda: journal_lines(data) == 0)
    finally:
        assert await stop(gw, signal.SIGTERM) == 0
    rows = await pg_rows(pg_url)
    assert sorted(r["request_id"] for r in rows) == sorted(f"p{i}" for i in range(30))
