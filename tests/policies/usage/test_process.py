"""The gateway as a process: SIGTERM flushes the queue; after SIGKILL the journal is replayed."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from gateway.local import free_port
from tests.support.gateways import CHAT
from tests.support.processes import GatewayProcess, start_gateway
from tests.support.usage import pg_rows, usage_settings, wait_for_rows
from tests.support.waiting import eventually


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
    # Past the first batches, nothing is written in the background: shutdown flushes.
    config = usage_yaml(pg_url, tmp_path / "data", flush_seconds=60, batch_size=1000)
    gw = await start_gateway(fake_url, tmp_path, 5, config)
    try:
        await send(gw, 25)
    finally:
        assert await stop(gw, signal.SIGTERM) == 0
    rows = await pg_rows(pg_url)
    assert sorted(r["request_id"] for r in rows) == sorted(f"p{i}" for i in range(25))
    assert journal_lines(tmp_path / "data") == 0


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


async def load(gw: GatewayProcess, answered: list[str], client: int) -> None:
    """Requests one after another until cancelled; `answered` gets each one whose whole
    answer arrived."""
    async with aiohttp.ClientSession() as session:
        for i in itertools.count():
            rid = f"c{client}-{i}"
            url = gw.url + "/v1/chat/completions"
            async with session.post(url, json=CHAT, headers={"X-Request-ID": rid}) as resp:
                await resp.read()
                assert resp.status == 200
            answered.append(rid)


async def test_sigkill_mid_load_loses_no_row_a_client_was_answered_for(
    fake_url: str, tmp_path: Path, pg_url: str
) -> None:
    data = tmp_path / "data"
    config = usage_yaml(pg_url, data, batch_size=1000, flush_seconds=2)
    gw = await start_gateway(fake_url, tmp_path, 5, config)
    answered: list[str] = []
    clients = [asyncio.create_task(load(gw, answered, k)) for k in range(8)]
    try:
        await eventually(lambda: len(answered) >= 300)
        await wait_for_rows(pg_url, 1)  # the database is taking rows
        before = list(answered)
        # The load goes on; rows of what was answered before have had time to reach the
        # journal (a few event-loop turns), which rows held in memory for flush_seconds
        # would not have.
        await asyncio.sleep(0.3)
        assert await stop(gw, signal.SIGKILL) == -signal.SIGKILL
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    gw = await start_gateway(fake_url, tmp_path, 5, usage_yaml(pg_url, data))
    try:
        await send(gw, 1)  # up and serving: its own row comes after the replayed ones
        await eventually(lambda: journal_lines(data) == 0)  # replayed
    finally:
        assert await stop(gw, signal.SIGTERM) == 0
    ids = [r["request_id"] for r in await pg_rows(pg_url) if r["request_id"] != "p0"]
    assert len(ids) == len(set(ids))  # no duplicates
    assert set(before) - set(ids) == set()  # none missing
    # Requests answered in the very last event-loop turns before the kill may have no row:
    # the relay runs completion work (which journals the row) after the answer's last
    # byte went out, one or two turns later.
