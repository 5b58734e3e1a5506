"""`serve --workers N` supervises its workers: one that dies is replaced, one that cannot
start stops them all, and none outlives the supervisor, however it stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.gateways import CHAT
from tests.support.processes import Workers, logged, serve_two_workers


async def test_a_worker_that_dies_is_replaced(workers: Workers) -> None:
    pid_file = workers.metrics_dir / "worker_0.pid"
    first = int(pid_file.read_text())
    os.kill(first, signal.SIGKILL)
    for _ in range(200):
        if int(pid_file.read_text()) != first:
            break
        await asyncio.sleep(0.05)
    assert int(pid_file.read_text()) != first
    async with (
        aiohttp.ClientSession() as session,
        session.post(workers.url + "/v1/chat/completions", json=CHAT) as resp,
    ):
        assert resp.status == 200


async def test_sigterm_stops_every_worker(workers: Workers) -> None:
    pids = [int(p.read_text()) for p in workers.metrics_dir.glob("worker_*.pid")]
    workers.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(workers.proc.wait(), 30) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    # Valid to check, fails when the worker starts: the key store's directory is a file.
    (tmp_path / "file").write_text("")
    config.write_text(
        f"storage: {{data_dir: {tmp_path / 'file'}}}\n"
        "tiers: {free: {}}\n"
        "policies: [{type: auth}]\n"
    )
    proc = await serve_two_workers(
        "http://127.0.0.1:9", "--config", str(config), metrics_dir=tmp_path / "metrics"
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"did not start listening" in err


async def test_sigterm_while_a_dead_worker_awaits_its_restart_stops_everything(
    fake_url: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    proc = await serve_two_workers(fake_url, metrics_dir=metrics_dir)
    try:
        await logged(proc, "gateway.workers", "listening on")
        survivor = int((metrics_dir / "worker_1.pid").read_text())
        os.kill(int((metrics_dir / "worker_0.pid").read_text()), signal.SIGKILL)
        # Logged just before the pause before the restart.
        await logged(proc, "gateway.workers", "restarting it")
        proc.send_signal(signal.SIGTERM)
        _, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        left = [int(p.read_text()) for p in metrics_dir.glob("worker_*.pid")]
        for pid in {survivor, *left}:  # no worker was started after the SIGTERM
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 30)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper that never comes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
async def test_workers_stop_when_the_supervisor_is_killed(workers: Workers) -> None:
    pids = [int(p.read_text()) for p in workers.metrics_dir.glob("worker_*.pid")]
    assert len(pids) == 2
    assert all(running(pid) for pid in pids)
    workers.proc.kill()  # SIGKILL: the supervisor forwards nothing
    await workers.proc.wait()
    for _ in range(300):
        if not any(running(pid) for pid in pids):
            break
        await asyncio.sleep(0.05)
    assert [pid for pid in pids if running(pid)] == []
