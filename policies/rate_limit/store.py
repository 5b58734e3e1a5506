"""Where the buckets live: Redis, or an embedded fakeredis running the very same Lua scripts.

Scripts are package data files, read and hashed once; calls go by EVALSHA and a script
the server does not know (NOSCRIPT: a restarted or flushed Redis) is loaded and the call
retried once. Every call is bounded in time; an unreachable or slow Redis surfaces as
`Unavailable`, and the first failure of an incident and the recovery are logged once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from importlib.resources import files
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.config import StorageConfig

log = logging.getLogger("policies.rate_limit")


class Unavailable(Exception):
    """Redis did not answer in time, or not at all."""


class Script:
    def __init__(self, name: str) -> None:
        self.name = name
        self.text = (files("policies.rate_limit") / "scripts" / f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


PROBE_SECONDS = 0.5

ADMIT = Script("admit")
SETTLE = Script("settle")


def open_client(storage: StorageConfig) -> Redis:
    """The shared client for `storage.redis_url`, or an embedded store without one."""
    if storage.redis_url is None:
        import fakeredis

        embedded: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        return embedded
    timeout = storage.redis_timeout_seconds
    # A bounded pool: a burst of requests waits briefly for a connection instead of
    # opening hundreds at once (each with a connect timeout to meet).
    pool = BlockingConnectionPool.from_url(
        storage.redis_url,
        max_connections=storage.redis_max_connections,
        timeout=timeout * 4,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # A connection that died (Redis restarted) is retried once at once, on a new
        # connection; a timeout is not retried: the time bound is the caller's promise.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis(connection_pool=pool)


class Backend:
    """Runs the scripts on one Redis client and keeps track of outages."""

    def __init__(self, client: Redis, timeout: float, where: str) -> None:
        self.client = client
        # The socket timeouts bound each read; this bounds a whole call (connect, a
        # reconnect, a NOSCRIPT reload) whatever happens inside the client.
        self.deadline = timeout * 4
        self.where = where
        self.down_since: float | None = None
        self.failures = 0
        # While Redis is failing, calls fail at once and one call per `PROBE_SECONDS`
        # tries it: an outage costs requests no waiting.
        self.probe_at = 0.0

    async def load(self) -> None:
        """Register the scripts (best effort: a Redis down at start-up is not fatal)."""
        try:
            async with asyncio.timeout(self.deadline):
                for script in (ADMIT, SETTLE):
                    await self.client.script_load(script.text)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> list[int]:
        if self.down_since is not None:
            now = time.monotonic()
            if now < self.probe_at:
                self.failures += 1
                raise Unavailable("Redis is failing; next try shortly")
            self.probe_at = now + PROBE_SECONDS
        try:
            async with asyncio.timeout(self.deadline):
                result = await self._call(script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise Unavailable(f"{exc.__class__.__name__}: {exc}") from exc
        if self.down_since is not None:
            self._recovered()
        return result

    async def _call(self, script: Script, keys: list[str], args: list[Any]) -> list[int]:
        client: Any = self.client  # redis-py types evalsha as sync-or-async
        try:
            result = await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            log.info("Redis lacks the %s script (restarted or flushed); loading it", script.name)
            await client.script_load(script.text)
            result = await client.evalsha(script.sha, len(keys), *keys, *args)
        return [int(x) for x in result] if isinstance(result, list) else [int(result)]

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.probe_at = self.down_since + PROBE_SECONDS
            log.error(
                "Redis at %s failed (%s: %s); rate limits follow their failure_mode until it "
                "answers again",
                self.where,
                exc.__class__.__name__,
                exc or "no answer in time",
            )

    def _recovered(self) -> None:
        assert self.down_since is not None
        log.warning(
            "Redis at %s answers again after %.1f s; %d calls failed meanwhile",
            self.where,
            time.monotonic() - self.down_since,
            self.failures,
        )
        self.down_since = None
        self.failures = 0
