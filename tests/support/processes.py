"""The gateway as a process of its own: starting it, finding its port, its log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

LOG_LINE_SECONDS = 60  # per line: only so that a broken build fails instead of hanging


async def serve(*argv: str, env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """`gateway.cli serve` with `argv` as a process of its own, its JSON log on a pipe."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "serve", *argv),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def logged(proc: asyncio.subprocess.Process, logger: str, text: str) -> dict[str, Any]:
    """The first record of `logger` with `text` in its message; fails if the gateway exits
    before it."""
    assert proc.stderr is not None
    while line := await asyncio.wait_for(proc.stderr.readline(), LOG_LINE_SECONDS):
        record: dict[str, Any] = orjson.loads(line)
        if record["logger"] == logger and text in record["msg"]:
            return record
    raise AssertionError(f"the gateway exited with {await proc.wait()} before {text!r}")


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"


async def start_gateway(
    fake_url: str, tmp_path: Path, grace: float, extra: str, drain_delay: float = 0
) -> GatewayProcess:
    config = tmp_path / "gateway.yaml"
    server = f"{{shutdown_grace_seconds: {grace}, drain_delay_seconds: {drain_delay}}}"
    config.write_text(f"server: {server}\n{extra}")
    proc = await serve("--config", str(config), "--port", "0", "--upstream", f"fake={fake_url}")
    record = await logged(proc, "gateway.server", "listening on")
    return GatewayProcess(proc, record["port"])


async def serve_two_workers(
    upstream_url: str, *options: str, metrics_dir: Path | None, port: str = "0", **env: str
) -> asyncio.subprocess.Process:
    """`serve --workers 2` in front of `upstream_url`, keeping its metrics in `metrics_dir`
    (None: in a directory it makes for the run), with `env` added to its environment."""
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if metrics_dir is not None:
        environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return await serve(
        *options,
        *("--port", port, "--workers", "2", "--upstream", f"fake={upstream_url}"),
        env={**environ, **env},
    )


class Workers:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, metrics_dir: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_dir = metrics_dir


@contextlib.asynccontextmanager
async def serving_workers(fake_url: str, tmp_path: Path, *options: str) -> AsyncIterator[Workers]:
    """`serve --workers 2` in front of the fake llama-server, until the block ends."""
    metrics_dir = tmp_path / "metrics"
    proc = await serve_two_workers(fake_url, *options, metrics_dir=metrics_dir)
    record = await logged(proc, "gateway.workers", "listening on")
    assert proc.stderr is not None
    # Keep reading its log so that a full pipe never stalls it.
    drain = asyncio.create_task(proc.stderr.read())
    try:
        yield Workers(proc, record["port"], metrics_dir)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(drain, 30)  # at end of file: every worker has exited too


GATEWAY_START_TIMEOUT = 30.0


LOG_TAIL_LINES = 40


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"the gateway exited with code {self.proc.returncode}\n{log_tail(self.log)}",
                pytrace=False,
            )


def listening_port(log: Path) -> int | None:
    """The port from the gateway's JSON "listening on host:port" log line, once written."""
    with contextlib.suppress(OSError):
        for line in log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict) and str(record.get("msg", "")).startswith(
                    "listening on"
                ):
                    return int(record["port"])
    return None


@contextlib.contextmanager
def configured_gateway(config: Mapping[str, Any], tmp_path: Path) -> Iterator[Gateway]:
    """`gateway.cli serve --config` on a file holding `config`, on a free port, until the
    block ends (the test fails with the log's tail when it does not start)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    log = tmp_path / "gateway.log"
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_GATEWAY_CONFIG"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while (port := listening_port(log)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the gateway did not start\n{log_tail(log)}", pytrace=False)
            time.sleep(0.05)
        yield Gateway(f"http://127.0.0.1:{port}", proc, log)
    finally:
        proc.terminate()
        code = proc.wait(30)
    if code != 0:  # a gateway that does not stop cleanly fails the test that used it
        pytest.fail(f"the gateway exited with code {code}\n{log_tail(log)}", pytrace=False)


@contextlib.contextmanager
def configured_client(config: Mapping[str, Any], tmp_path: Path) -> Iterator[openai.OpenAI]:
    """The official OpenAI SDK in front of a `configured_gateway`."""
    with (
        configured_gateway(config, tmp_path) as gateway,
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120
        ) as client,
    ):
        yield client
