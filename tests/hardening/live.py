"""A live gateway for the hardening suite: every policy on, in front of the fake upstream.

Hypothesis runs a test's examples one after another inside one call of the test function,
and it refuses function-scoped fixtures (they would not be reset between examples). An
aiohttp app built per example would cost more than the requests themselves. So the
gateway and the fake upstream are built once per test module and run on an event loop of
their own, in a background thread; each example is a plain synchronous call that submits
its coroutine to that loop and waits for the answer (`LiveGateway.run`). The gateway's
listener is a real socket, so the examples talk to it in raw bytes (`tests.hardening.wire`)
exactly as a hostile client would.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jwt
from aiohttp import web

from gateway.access import AccessLog
from gateway.app import STATE, create_app
from gateway.config import parse_config
from gateway.logs import setup_logging
from gateway.protocol import GatewayRunner
from gateway.storage import StorageConfig
from policies.auth.keys import open_store
from tests.support.auth import sha256
from tests.support.fake_llama import FakeLlama
from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix

T = TypeVar("T")

JWT_SECRET = "hardening-jwt-secret-" + "k" * 24
JWT_SECRET_ENV = "HARDENING_JWT_SECRET"
ADMIN_TOKEN = "hardening-admin-token-0123456789abcdef"
CAP = 16  # the `free` tier's max_tokens
ORIGIN = "https://app.example.com"  # the one origin CORS allows
TIERS = {
    "free": {"models": ["fake"], "max_tokens": CAP},
    "premium": {},
}
# Generous limits: the fuzz must reach the upstream, not drown in 429s; the token
# buckets are still large enough to exercise every estimate and reservation path.
LIMITS = {
    "free": {
        "requests_per_minute": 10**9,
        "tokens_per_minute": 10**12,
        "concurrency": 64,
        "tokens_per_day": 10**13,
        "per_user": {"requests_per_minute": 10**9},
        "whole_tier": {"tokens_per_minute": 10**12},
    },
    "premium": {"requests_per_minute": 10**9, "tokens_per_minute": 10**12},
}


def make_jwt(secret: str = JWT_SECRET, **claims: Any) -> str:
    payload = {"sub": "fuzz-user", "tier": "free", "aud": "gw", "iss": "idp"}
    payload["exp"] = int(time.time()) + 3600
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


class Lines:
    """Every log line written, by any logger and by the access log, thread-safely."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:  # a stream for logging.StreamHandler
        with self._lock:
            *done, self._partial = (self._partial + text).split("\n")
            self._lines.extend(done)
        return len(text)

    def flush(self) -> None:
        pass

    def write_bytes(self, data: bytes) -> None:  # the access log's writer
        self.write(data.decode("utf-8", "replace"))

    def mark(self) -> int:
        with self._lock:
            return len(self._lines)

    def since(self, mark: int = 0) -> list[str]:
        with self._lock:
            return self._lines[mark:] + ([self._partial] if self._partial else [])


@dataclass
class Credentials:
    """Valid credentials by tier, and the secrets no log line may contain."""

    keys: dict[str, str] = field(default_factory=dict)  # tier -> API key
    tokens: dict[str, str] = field(default_factory=dict)  # tier -> JWT

    def secrets(self) -> list[str]:
        found = [JWT_SECRET, ADMIN_TOKEN, *self.tokens.values(), *self.keys.values()]
        found += [token.rsplit(".", 1)[1] for token in self.tokens.values()]
        for key in self.keys.values():
            secret = key.split("_", 2)[2]
            found += [secret[i : i + 8] for i in range(len(secret) - 7)]
        return found


class LiveGateway:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-gateway")
        self.fake = FakeLlama()
        self.lines = Lines()
        self.credentials = Credentials()
        self.prefix = unique_prefix()
        self.port = 0
        self.fake_url = ""
        self.app: web.Application | None = None
        self._runners: list[web.AppRunner] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()
            drop_keys(SHARED_REDIS, self.prefix)

    async def _listen(
        self, app: web.Application, runner_type: type[web.AppRunner] = web.AppRunner, **options: Any
    ) -> int:
        runner = runner_type(app, **options)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    async def _start(self) -> None:
        data = await self._start_upstream_and_keys()
        self.app = create_app(parse_config(raw_config(self.fake_url, data, self.prefix)))
        # As `gateway.server.serve` runs it: its runner (parse errors answered in JSON),
        # cancelled handlers, no aiohttp access log.
        self.port = await self._listen(
            self.app, GatewayRunner, handler_cancellation=True, access_log=None
        )
        relay = self.app[STATE].relay
        assert relay is not None
        relay.access_log = AccessLog(self.lines.write_bytes)
        await self._ready()

    async def _start_upstream_and_keys(self) -> Path:
        """The fake upstream listening, and an API key of each tier in the key store."""
        self.fake_url = f"http://127.0.0.1:{await self._listen(self.fake.app())}"
        data = self.workdir / "data"
        store = open_store(None, StorageConfig(data_dir=str(data)).sqlite_path)
        await store.start()
        for tier in TIERS:
            self.credentials.keys[tier], _ = await store.create(f"owner-{tier}", tier, None)
            self.credentials.tokens[tier] = make_jwt(sub=f"user-{tier}", tier=tier)
        await store.close()
        return data

    async def _ready(self) -> None:
        from tests.hardening.wire import exchange, request

        for _ in range(500):
            if (await exchange(self.port, request("GET", "/ready"))).status == 200:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the live gateway never became ready")

    async def _stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        await self.loop.shutdown_default_executor()

    def take_upstream(self) -> tuple[list[tuple[str, bytes]], list[int]]:
        """What the fake upstream received and answered since the last call (then forgotten)."""
        received, answered = self.fake.received[:], self.fake.answered[:]
        self.fake.received.clear()
        self.fake.answered.clear()
        self.fake.requests.clear()
        self.fake.headers.clear()
        return received, answered

    def usage_request_ids(self) -> list[str | None]:
        path = self.workdir / "data" / "gateway.db"
        with sqlite3.connect(path) as db:
            return [row[0] for row in db.execute("SELECT request_id FROM usage_records")]


def raw_config(fake_url: str, data: Path, prefix: str) -> dict[str, Any]:
    """The gateway's configuration, as a YAML file would hold it."""
    return {
        "server": {"cors": {"origins": [ORIGIN]}},
        "models": {"fake": {"upstreams": [fake_url]}},
        # The fake answers at once; a busy machine must not turn that into a 504.
        "upstream": {
            "health_interval_seconds": 0.05,
            "first_byte_timeout": 120,
            "idle_timeout": 120,
        },
        "logging": {"level": "DEBUG", "access_log": True},
        "storage": {"redis_url": SHARED_REDIS, "data_dir": str(data)},
        "tiers": TIERS,
        "policies": [
            {"type": "request_id"},
            {
                "type": "usage",
                "flush_seconds": 0.05,
                "retry_initial_seconds": 0.05,
                "retry_max_seconds": 0.2,
                "admin": {"key_hashes": [sha256(ADMIN_TOKEN)]},
            },
            {
                "type": "auth",
                "api_keys": True,
                "cache_seconds": 1,
                "jwt": {
                    "algorithms": ["HS256"],
                    "secret_env": JWT_SECRET_ENV,
                    "audience": "gw",
                    "issuer": "idp",
                    "max_token_bytes": 4096,
                    "tiers": {tier: tier for tier in TIERS},  # the tier claim, mapped
                },
            },
            {"type": "rate_limit", "key_prefix": prefix, "tiers": LIMITS},
            {"type": "cache", "key_prefix": f"{prefix}:cache"},
        ],
    }


@contextmanager
def captured_logs(lines: Lines) -> Iterator[None]:
    """Every logger's output through the gateway's own JSON logging, into `lines`."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("DEBUG", stream=lines)  # type: ignore[arg-type]
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
