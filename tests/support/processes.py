"""The gateway as a process of its own: starting it, finding its port, its log."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"


async def start_gateway(fake_url: str, tmp_path: Path, grace: float, extra: str) -> GatewayProcess:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"server: {{shutdown_grace_seconds: {grace}}}\n{extra}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        "--upstream",
        f"fake={fake_url}",
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    while line := await asyncio.wait_for(proc.stderr.readline(), 30):
        record = orjson.loads(line)
        if record["msg"].startswith("listening"):
            return GatewayProcess(proc, record["port"])
    raise AssertionError(f"gateway exited with {await proc.wait()} before listening")


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
