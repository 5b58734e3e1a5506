"""`serve --workers N`: several processes on one port, one set of metrics; a metrics
directory the gateway makes for the run does not outlive it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateways import CHAT
from tests.support.processes import Workers, logged, serve_two_workers, serving_workers

REQUESTS = 40


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
        serving_workers(fake_url, tmp_path, "--config", str(config)) as workers,
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
        serving_workers(fake_url, tmp_path, "--config", str(config)) as workers,
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


async def test_a_metrics_directory_made_for_the_run_is_removed_at_exit(fake_url: str) -> None:
    proc = await serve_two_workers(fake_url, metrics_dir=None)
    directory = (await logged(proc, "gateway.workers", "listening on"))["metrics_dir"]
    pid_files = [name for name in os.listdir(directory) if name.endswith(".pid")]
    assert sorted(pid_files) == ["worker_0.pid", "worker_1.pid"]
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert not await asyncio.to_thread(os.path.exists, directory)


async def test_a_port_in_use_leaves_no_metrics_directory_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = await serve_two_workers(
            "http://127.0.0.1:9", port=port, metrics_dir=None, TMPDIR=str(tmp_path)
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert b"Address already in use" in err
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
