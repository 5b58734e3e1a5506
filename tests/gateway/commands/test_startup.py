"""A gateway whose start-up dependency is unreachable exits with one clear line, no traceback.

Run as a real process (`python -m gateway.cli serve`), as an orchestrator would, against a
closed port and against a proxy that accepts connections and resets them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.local import free_port
from tests.support.tcp_proxy import TcpProxy

ROOT = Path(__file__).parents[3]


AUTH = [{"type": "auth", "api_keys": True}]


def write_config(tmp_path: Path, database_url: str, policies: list[dict[str, Any]] = AUTH) -> Path:
    path = tmp_path / "gateway.yaml"
    config = {
        "models": {"m": {"upstreams": [f"http://127.0.0.1:{free_port()}"]}},
        "storage": {"database_url": database_url, "data_dir": str(tmp_path / "data")},
        "tiers": {"free": {}},
        "policies": policies,
    }
    path.write_text(json.dumps(config))
    return path


async def serve(*argv: str) -> tuple[int, str, str]:
    """Run `llama-gateway serve ARGV` to its end: (exit code, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLAMA_GATEWAY_CONFIG": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--port", "0", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):  # a hang fails the test instead of blocking the suite
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_clear_line(err: str, port: int) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return assert_clear(lines[0], port)


def assert_clear(line: str, port: int) -> str:
    assert line.startswith("error: the PostgreSQL database at 127.0.0.1:")
    assert f":{port} (storage.database_url) cannot be used:" in line
    assert "start it or correct storage.database_url" in line
    return line


async def test_serve_with_the_key_database_down_exits_with_one_clear_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, f"postgresql://gateway:s3cret@127.0.0.1:{port}/test")
    code, out, err = await serve("--config", str(config))
    assert code == 1
    assert out == ""
    line = assert_one_clear_line(err, port)
    assert "Connection refused" in line
    assert "s3cret" not in line  # the URL's password is never printed


async def test_serve_with_a_database_that_resets_connections_exits_with_one_clear_line(
    tmp_path: Path,
) -> None:
    proxy = TcpProxy("127.0.0.1", free_port())  # nothing behind it: every connection is reset
    await proxy.start()
    try:
        config = write_config(tmp_path, "postgresql://postgres@127.0.0.1:1/test")
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        code, _, err = await serve("--config", str(config), "--database-url", url)
    finally:
        await proxy.close()
    assert code == 1
    line = assert_one_clear_line(err, proxy.port)
    # A reset during the handshake, or the connection closed before it: either is named.
    assert "ConnectionError" in line or "ConnectionResetError" in line


async def test_serve_with_usage_started_before_auth_fails_ends_on_the_clear_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    # Usage first, as in the example policy file: its writer runs when auth fails to start.
    config = write_config(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/test", [
        {"type": "usage"}, *AUTH,
    ])  # fmt: skip
    code, _, err = await serve("--config", str(config))
    assert code == 1
    assert "Traceback" not in err
    *logged, last = err.strip().splitlines()
    assert_clear(last, port)
    assert all(json.loads(line)["level"] == "warning" for line in logged), logged


async def test_serve_on_a_port_in_use_exits_with_one_clear_line(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, _, err = await serve("--upstream", "m=http://127.0.0.1:9", "--port", str(port))
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot listen on 127.0.0.1:{port} (server.host, server.port):")
    assert "choose another --port" in last


async def test_serve_with_workers_and_the_key_database_down_says_so_without_a_traceback(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/test")
    code, _, err = await serve("--config", str(config), "--workers", "2")
    assert code != 0
    assert "Traceback" not in err
    said = "(storage.database_url) cannot be used"
    explained = [line for line in err.splitlines() if said in line]
    assert explained, err
    assert f"127.0.0.1:{port}" in explained[0]
