"""A live monitoring stack: a real Prometheus scraping a gateway (`serve --workers 2`) in
front of the fake llama-server, with traffic of every kind.

Used by the live test, and on its own to plot the dashboard's main panels for the docs:

    python -m tests.monitoring.stack --minutes 4 --plot monitoring/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

from gateway.registry import available
from tests.support.auth import sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts.yml"
PREMIUM_KEY = "live-stack-premium-key-0123456789"
FREE_KEY = "live-stack-free-key-0123456789"

# Policies that other branches add: turned on here as soon as they are installed, so that
# their metrics carry real traffic. Their settings are the lead's to adjust.
OPTIONAL_POLICIES: dict[str, dict[str, Any]] = {
    # The free tier runs out within a few rounds of traffic: the rate-limit panels get data.
    "rate_limit": {
        "type": "rate_limit",
        "key_prefix": f"llgw-live-{os.getpid()}",
        "tiers": {
            "free": {"requests_per_minute": 3},
            "premium": {"requests_per_minute": 100_000, "tokens_per_minute": 10_000_000},
        },
    },
    "cache": {"type": "cache"},
}
# Usage accounting goes before auth, so that refusals are recorded too.
USAGE = {
    "type": "usage",
    "prices": {"*": {"prompt_per_million": 0.1, "completion_per_million": 0.4}},
    "flush_seconds": 0.2,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def key_entry(key: str, owner: str, tier: str) -> dict[str, str]:
    return {
        "hash": sha256(key),
        "owner": owner,
        "tier": tier,
    }


def gateway_config(fake_url: str, data_dir: Path) -> dict[str, Any]:
    installed = available()
    policies: list[dict[str, Any]] = [
        {"type": "request_id"},
        *([USAGE] if "usage" in installed else []),
        {
            "type": "auth",
            "api_keys": False,
            "static_keys": [
                key_entry(PREMIUM_KEY, "ops", "premium"),
                key_entry(FREE_KEY, "trial", "free"),
            ],
        },
    ]
    policies += [spec for name, spec in OPTIONAL_POLICIES.items() if name in installed]
    return {
        "models": {"fake": {"upstreams": [fake_url]}, "fake-embed": {"upstreams": [fake_url]}},
        "upstream": {"health_interval_seconds": 0.5},
        "storage": {"data_dir": str(data_dir)},
        "tiers": {"free": {"models": ["fake"]}, "premium": {}},
        "policies": policies,
        "logging": {"level": "INFO", "access_log": False},
    }


def prometheus_config(gateway: str, llama: str) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "llama-gateway", "static_configs": [{"targets": [gateway]}]},
            {"job_name": "llama-server", "static_configs": [{"targets": [llama]}]},
        ],
    }


@dataclass
class Stack:
    gateway: str
    prometheus: str
    session: aiohttp.ClientSession

    async def query(self, expr: str) -> dict[str, Any]:
        async with self.session.get(
            self.prometheus + "/api/v1/query", params={"query": expr}
        ) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def traffic(self) -> None:
        """One round of every kind of request the dashboard shows."""
        premium = {"Authorization": f"Bearer {PREMIUM_KEY}"}
        free = {"Authorization": f"Bearer {FREE_KEY}"}
        chat = self.gateway + "/v1/chat/completions"
        calls: list[tuple[str, dict[str, Any], dict[str, str]]] = [
            (chat, CHAT, premium),
            (chat, {**CHAT, "stream": True, "fake": {"chunks": 8, "delay": 0.01}}, premium),
            (chat, {**CHAT, "stream": True, "fake": {"chunks": 4}}, free),
            (self.gateway + "/v1/embeddings", {"model": "fake-embed", "input": "hi"}, premium),
            # Cacheable (temperature 0): a miss the first round, a hit after.
            (chat, {**CHAT, "temperature": 0}, premium),
            (chat, {**CHAT, "fake": {"status": 500}}, premium),  # upstream error: 5xx
            (chat, {**CHAT, "model": "nope"}, premium),  # 404 model_not_found
            (chat, CHAT, {}),  # 401: no key
            (chat, {**CHAT, "model": "fake-embed"}, free),  # 403: not in the free tier
        ]
        for url, body, headers in calls:
            async with self.session.post(url, json=body, headers=headers) as resp:
                await resp.read()
        async with self.session.get(self.gateway + "/v1/models", headers=premium) as resp:
            await resp.read()
        # A client hanging up in the middle of a stream.
        body = {**CHAT, "stream": True, "fake": {"chunks": 50, "delay": 0.02}}
        async with self.session.post(chat, json=body, headers=premium) as resp:
            await resp.content.readuntil(b"\n\n")


async def _wait_line(stream: asyncio.StreamReader, logger: str) -> dict[str, Any]:
    while line := await asyncio.wait_for(stream.readline(), 60):
        with contextlib.suppress(orjson.JSONDecodeError):
            record: dict[str, Any] = orjson.loads(line)
            if record.get("logger") == logger and record["msg"].startswith("listening"):
                return record
    raise AssertionError(f"no 'listening' line from {logger}")


@contextlib.asynccontextmanager
async def process(*cmd: str, **kwargs: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(*cmd, **kwargs)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def live_stack(fake_url: str, tmp: Path, prometheus: str) -> AsyncIterator[Stack]:
    """A gateway with two workers and a Prometheus scraping it and the fake llama-server."""
    config = tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_config(fake_url, tmp / "data")))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    env.pop("LLAMA_GATEWAY_CONFIG", None)
    serve = (sys.executable, "-m", "gateway.cli", "serve", "--config", str(config))
    drain: asyncio.Task[bytes] | None = None
    try:
        async with process(
            *serve, "--port", "0", "--workers", "2", stderr=asyncio.subprocess.PIPE, env=env
        ) as gw:
            assert gw.stderr is not None
            port = (await _wait_line(gw.stderr, "gateway.workers"))["port"]
            drain = asyncio.create_task(gw.stderr.read())  # a full pipe would stall it
            async with (
                _prometheus(prometheus, tmp, f"127.0.0.1:{port}", fake_url) as url,
                aiohttp.ClientSession() as session,
            ):
                stack = Stack(f"http://127.0.0.1:{port}", url, session)
                await wait_for_scrapes(stack)
                yield stack
    finally:
        if drain is not None:  # the gateway and its workers have exited: end of file
            await asyncio.wait_for(drain, 30)


@contextlib.asynccontextmanager
async def _prometheus(binary: str, tmp: Path, gateway: str, fake_url: str) -> AsyncIterator[str]:
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(gateway, fake_url.removeprefix("http://"))))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        async with process(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=out,
            stderr=out,
        ):
            try:
                yield f"http://127.0.0.1:{port}"
            except AssertionError as exc:
                tail = log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"{exc}\nPrometheus log:\n{tail}") from exc


async def wait_for_scrapes(stack: Stack) -> None:
    """Until Prometheus has scraped both targets at least twice (a minute at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            body = await stack.query("count_over_time(up[1m]) >= 2 and up == 1")
            if body.get("status") == "success" and len(body["data"]["result"]) == 2:
                return
        await asyncio.sleep(0.25)
    raise AssertionError("Prometheus did not scrape the gateway and llama-server in time")


@contextlib.asynccontextmanager
async def fake_llama() -> AsyncIterator[str]:
    """The fake llama-server on a free port; yields its URL."""
    fake = FakeLlama()
    fake.record = False
    fake.cached_tokens = 3  # of each prompt's 5 tokens: the prompt-cache panel has data
    runner = web.AppRunner(fake.app())
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _demo(minutes: float, plot: Path | None) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("error: prometheus is needed: apt-get install -y prometheus")
    with tempfile.TemporaryDirectory(prefix="live-stack-") as tmp:
        async with fake_llama() as fake_url, live_stack(fake_url, Path(tmp), prometheus) as stack:
            started = time.time()
            print(f"Prometheus at {stack.prometheus}, gateway at {stack.gateway}", flush=True)
            while time.time() - started < minutes * 60:
                # Traffic that rises and falls, so the plots show something.
                phase = (time.time() - started) / 60
                rounds = 1 + int(4 * abs((phase % 2) - 1))
                await asyncio.gather(*(stack.traffic() for _ in range(rounds)))
                await asyncio.sleep(0.5)
            if plot is not None:
                from monitoring.plot import plot_dashboard

                await plot_dashboard(stack.session, stack.prometheus, started, time.time(), plot)
                print(f"wrote {plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--plot", type=Path, help="plot the dashboard's main panels to this PNG")
    args = parser.parse_args()
    asyncio.run(_demo(args.minutes, args.plot))


if __name__ == "__main__":
    main()
