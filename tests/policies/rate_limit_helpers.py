"""Helpers for the rate-limit tests: unique key prefixes on the shared Redis, a private
Redis server a test may stop and restart, and gateway configurations."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

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
