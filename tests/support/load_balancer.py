"""The compose stack's load balancer for real: HAProxy run on compose/haproxy.cfg, with
only its addresses changed, in front of gateway processes on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.deploy import ROOT
from tests.support.processes import listening_port, log_tail
from tests.support.rate_limits import free_port
from tests.support.waiting import eventually

HAPROXY_CFG = ROOT / "compose" / "haproxy.cfg"
COMPOSE_GATEWAY = ROOT / "compose" / "gateway.yaml"
# The addresses of the compose stack, as haproxy.cfg names them.
LISTEN = "bind :8080"
REPLICAS = ("gateway-1:8080", "gateway-2:8080")
DOCKER_DNS = "127.0.0.11:53"


def render(listen: int, replicas: Sequence[int], dns: int) -> str:
    """haproxy.cfg with the compose stack's addresses replaced by local ones (`dns`: a
    port nobody answers on, as the test's replicas have addresses, not names)."""
    text = HAPROXY_CFG.read_text()
    addresses = {
        LISTEN: f"bind 127.0.0.1:{listen}",
        **{name: f"127.0.0.1:{port}" for name, port in zip(REPLICAS, replicas, strict=True)},
        DOCKER_DNS: f"127.0.0.1:{dns}",
    }
    for old, new in addresses.items():
        assert old in text, f"{HAPROXY_CFG} no longer names {old!r}"
        text = text.replace(old, new)
    return text


def compose_server_settings() -> dict[str, Any]:
    """The `server` section the compose stack's gateways run with (drain delay included)."""
    server: dict[str, Any] = yaml.safe_load(COMPOSE_GATEWAY.read_text())["server"]
    return server


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def write_config(directory: Path, config: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gateway.yaml").write_text(yaml.safe_dump(config))
    return directory / "gateway.yaml", directory / "gateway.log"


async def start_replica(config: dict[str, Any], directory: Path) -> Replica:
    """`gateway.cli serve` on `config`, on a free port, its JSON log in `directory`."""
    path, log = write_config(directory, config)
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_GATEWAY_CONFIG"}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)),
            *("--port", "0"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def started() -> bool:
        assert proc.returncode is None, f"the gateway exited\n{log_tail(log)}"
        return listening_port(log) is not None

    await eventually(started, seconds=60)
    port = listening_port(log)
    assert port is not None
    return Replica(proc, port, log)


async def stop(replica: Replica) -> int:
    if replica.proc.returncode is None:
        replica.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(replica.proc.wait(), 60)


@contextlib.asynccontextmanager
async def replicas(
    configs: Sequence[dict[str, Any]], directory: Path
) -> AsyncIterator[list[Replica]]:
    starting = [start_replica(c, directory / f"gateway-{n}") for n, c in enumerate(configs, 1)]
    results = await asyncio.gather(*starting, return_exceptions=True)
    started = [r for r in results if isinstance(r, Replica)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield started
    finally:
        codes = await asyncio.gather(*(stop(r) for r in started))
    for replica, code in zip(started, codes, strict=True):
        assert code == 0, f"the gateway exited with {code}\n{log_tail(replica.log)}"


@contextlib.asynccontextmanager
async def haproxy(binary: str, replicas: Sequence[Replica], directory: Path) -> AsyncIterator[str]:
    """HAProxy in the foreground on the rendered configuration, until the block ends; its
    URL once it listens."""
    port = free_port()
    config, log = directory / "haproxy.cfg", directory / "haproxy.log"
    config.write_text(render(port, [r.port for r in replicas], free_port()))
    check = await asyncio.create_subprocess_exec(
        binary, "-c", "-q", "-f", str(config), stderr=asyncio.subprocess.PIPE
    )
    _, problems = await check.communicate()
    assert check.returncode == 0, problems.decode()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(config), stdout=out, stderr=out
        )

    async def listening() -> bool:
        assert proc.returncode is None, f"haproxy exited\n{log_tail(log)}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    try:
        await eventually(listening, seconds=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def replica_of(headers: Any) -> str:
    """Which gateway process answered: the request ID starts with its own random prefix."""
    request_id: str = headers["X-Request-ID"]
    return request_id[:20]
