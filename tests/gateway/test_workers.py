"""`serve --workers N`: several processes on one port, one set of metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateways import CHAT

REQUESTS = 40


class Workers:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, metrics_dir: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_dir = metrics_dir


@pytest.fixture
async def workers(fake_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    async with serving(fake_url, tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def serving(fake_url: str, tmp_path: Path, *options: str) -> AsyncIterator[Workers]:
    """`serve --workers 2` in front of the fake llama-server, until the block ends."""
    metrics_dir = tmp_path / "metrics"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        *options,
        "--port",
        "0",
        "--workers",
        "2",
        "--upstream",
        f"fake={fake_url}",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    assert proc.stderr is not None
    port = None
    while line := await asyncio.wait_for(proc.stderr.readline(), 60):
        record = orjson.loads(line)
        if record["logger"] == "gateway.workers" and record["msg"].startswith("listening"):
            port = record["port"]
            break
    assert port is not None, f"the gateway exited with {await proc.wait()} before listening"
    # Keep reading its log so that a full pipe never stalls it.
    drain = asyncio.create_task(proc.stderr.read())
    try:
        yield Workers(proc, port, metrics_dir)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(drain, 30)  # at end of file: every worker has exited too


def requests_total(text: str) -> float:
    return sample_sum(text, "llama_gateway_requests_total")


def sample_sum(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def per_process_requests(metrics_dir: Path, tmp_path: Path) -> list[float]:
    """Requests counted by each worker process, read from its own sample file."""
    counts = []
    for i, path in enumerate(sorted(metrics_dir.glob("counter_*.db"))):
        alone = tmp_path / f"alone-{i}"
        alone.mkdir()
        shutil.copy(path, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))  # type: ignore[no-untyped-call]
        counts.append(requests_total(generate_latest(registry).decode()))
    return counts


async def chats(session: aiohttp.ClientSession, url: str, status: int) -> None:
    """REQUESTS chat requests, each answered with `status`."""
    for _ in range(REQUESTS):
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == status


async def test_metrics_add_up_the_requests_of_every_worker(
    workers: Workers, tmp_path: Path
) -> None:
    # A new connection per request: the kernel spreads connections, not requests.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await chats(session, workers.url, 200)
        async with session.get(workers.url + "/metrics") as resp:
            text = await resp.text()
    counts = per_process_requests(workers.metrics_dir, tmp_path)
    assert len([c for c in counts if c > 0]) == 2, counts  # both workers served some
    assert sum(counts) == REQUESTS
    assert requests_total(text) == REQUESTS
    assert "llama_gateway_workers 2.0" in text
    assert 'process_resident_memory_bytes{worker="1"}' in text


async def test_a_policys_counter_adds_up_over_the_workers(fake_url: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("policies: [{type: auth, api_keys: false}]\n")
    async with (
        serving(fake_url, tmp_path, "--config", str(config)) as workers,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
    ):
        await chats(session, workers.url, 401)
        async with session.get(workers.url + "/metrics") as resp:
            text = await resp.text()
    failures = "llama_gateway_auth_failures_total"
    assert sample_sum(text, failures, reason="missing") == REQUESTS
    assert f'{failures}{{reason="invalid_key"}} 0.0' in text  # created at 0 by every worker


async def test_a_tracked_gauge_adds_up_over_the_workers(fake_url: str, tmp_path: Path) -> None:
    """The usage journal's bytes, while no database takes them, from both workers."""
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"storage: {{data_dir: {data}, database_url: 'postgresql://nobody@127.0.0.1:9/none'}}\n"
        "policies: [{type: usage}]\n"
    )
    async with (
        serving(fake_url, tmp_path, "--config", str(config)) as workers,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
    ):
        await chats(session, workers.url, 200)
        # A row reaches the journal once its answer is sent; each worker publishes its
        # share of the gauge every second.
        for _ in range(100):
            rows, written = journal_rows_and_bytes(data)
            async with session.get(workers.url + "/metrics") as resp:
                gauge = sample_sum(await resp.text(), "llama_gateway_usage_journal_bytes")
            if rows == REQUESTS and gauge == written:
                break
            await asyncio.sleep(0.1)
    assert len(list(data.glob("usage-journal-*.jsonl"))) == 2  # one per worker
    assert rows == REQUESTS
    assert gauge == written


def journal_rows_and_bytes(data: Path) -> tuple[int, int]:
    contents = [path.read_bytes() for path in data.glob("usage-journal-*.jsonl")]
    return sum(text.count(b"\n") for text in contents), sum(len(text) for text in contents)


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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        "--workers",
        "2",
        "--upstream",
        "fake=http://127.0.0.1:9",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert b"did not start listening" in err


async def test_a_metrics_directory_made_for_the_run_is_removed_at_exit(fake_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--workers", "2"),
        *("--upstream", f"fake={fake_url}"),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    while line := await asyncio.wait_for(proc.stderr.readline(), 60):
        record = orjson.loads(line)
        if record["logger"] == "gateway.workers" and record["msg"].startswith("listening"):
            break
    directory = record["metrics_dir"]
    pid_files = [name for name in os.listdir(directory) if name.endswith(".pid")]
    assert sorted(pid_files) == ["worker_0.pid", "worker_1.pid"]
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert not await asyncio.to_thread(os.path.exists, directory)


async def test_sigterm_while_a_dead_worker_awaits_its_restart_stops_everything(
    fake_url: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "serve", "--port", "0", "--workers", "2"),
        *("--upstream", f"fake={fake_url}"),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    assert proc.stderr is not None

    async def logged(text: str) -> None:
        assert proc.stderr is not None
        while line := await asyncio.wait_for(proc.stderr.readline(), 60):
            record = orjson.loads(line)
            if record["logger"] == "gateway.workers" and text in record["msg"]:
                return
        raise AssertionError(f"the gateway exited with {await proc.wait()} before {text!r}")

    try:
        await logged("listening")
        survivor = int((metrics_dir / "worker_1.pid").read_text())
        os.kill(int((metrics_dir / "worker_0.pid").read_text()), signal.SIGKILL)
        await logged("restarting it")  # logged just before the pause before the restart
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


async def test_a_port_in_use_leaves_no_metrics_directory_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway.cli", "serve", "--port", port, "--workers", "2"),
            *("--upstream", "fake=http://127.0.0.1:9"),
            stderr=asyncio.subprocess.PIPE,
            env={**env, "TMPDIR": str(tmp_path)},
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert b"Address already in use" in err
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


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
