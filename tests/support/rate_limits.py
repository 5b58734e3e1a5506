"""Helpers for the rate-limit tests: unique key prefixes on the shared Redis, a private
Redis server a test may stop and restart, and gateway configurations."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from tests.support.auth import sha256

SHARED_REDIS = "redis://127.0.0.1:6379/0"
CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}]}


def unique_prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex[:12]}"


def drop_keys(url: str, prefix: str) -> None:
    """Delete this test's keys (only those: the Redis is shared)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, on a free port, that it may stop and restart."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.options = options  # more redis-server options, e.g. --requirepass
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is needed: apt-get install -y redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.options]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        if "--requirepass" in self.options:
            client = redis.Redis(
                port=self.port,
                password=self.options[self.options.index("--requirepass") + 1],
                socket_timeout=0.5,
            )
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.AuthenticationError):
                    if client.ping():
                        return
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@contextlib.contextmanager
def private_redis(workdir: Path, *options: str) -> Iterator[PrivateRedis]:
    server = PrivateRedis(workdir, *options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def limit_policy(prefix: str, **settings: Any) -> dict[str, Any]:
    return {"type": "rate_limit", "key_prefix": prefix, **settings}


class ReplyGate:
    """A TCP proxy to Redis that passes commands at once but can hold Redis's replies:
    a command then runs while its caller waits (a slow network, a late answer)."""

    def __init__(self, target: str = SHARED_REDIS) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.open = asyncio.Event()
        self.open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> ReplyGate:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for pipe in (self._commands(reader, up_writer), self._replies(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commands(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
        except ConnectionError:
            pass  # the client is gone
        finally:
            writer.close()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.open.wait()
                writer.write(data)
        except ConnectionError:
            pass  # the client is gone
        finally:
            writer.close()


# A generous bound: these tests are about exact limits, not timeouts, on a busy machine.
STORAGE = {"redis_url": SHARED_REDIS, "redis_timeout_seconds": 2}


def quota_used(store: redis.Redis, prefix: str, unit: str = "quota_day") -> int:
    """Tokens charged to the caller's quota in the window its hash holds."""
    keys = list(store.scan_iter(match=f"{prefix}:*:{unit}"))
    assert len(keys) == 1, keys
    return int(store.hget(keys[0], "v") or 0)


KEYS = {"alice-1": "alice", "alice-2": "alice", "bob-1": "bob"}


TIERS = {"free": {"max_tokens": 20}, "premium": {}}


def static_keys(tier: str = "free") -> list[dict[str, str]]:
    return [{"hash": sha256(key), "owner": owner, "tier": tier} for key, owner in KEYS.items()]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
