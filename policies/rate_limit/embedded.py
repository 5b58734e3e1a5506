"""The embedded store for a gateway without Redis: the very same Lua scripts, run in
process by Lua 5.1 (Redis's Lua), on a keyspace kept in Lua (`scripts/keyspace.lua`)
that offers the commands the scripts use with Redis's semantics (replies, errors,
expiry in milliseconds). Commands stay inside Lua: a script costs one call from Python.

It answers `SCRIPT LOAD` and `EVALSHA` like a Redis server (NOSCRIPT included), behind
the same `call` interface as the Redis client, so the policy cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from lupa import lua51

from gateway.redis_client import ReplyError

SWEEP_MS = 1000  # how often expired keys nobody reads again are dropped


class Embedded:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the store's time, what TIME answers: unix seconds
        self.lua = lua51.LuaRuntime(encoding="utf-8", unpack_returned_tuples=True)
        keyspace = (files("policies.rate_limit") / "scripts" / "keyspace.lua").read_text("utf-8")
        redis, self._begin, self._sweep = self.lua.execute(keyspace)
        self.lua.globals().redis = redis
        self.scripts: dict[str, Any] = {}
        self._swept = 0

    async def call(self, *args: Any) -> Any:
        name = str(args[0]).upper()
        if name == "SCRIPT" and str(args[1]).upper() == "LOAD":
            text = str(args[2])
            sha = hashlib.sha1(text.encode()).hexdigest()
            self.scripts[sha] = self.lua.compile(f"local KEYS, ARGV = ...\n{text}")
            return sha
        if name == "EVALSHA":
            return self._evalsha(str(args[1]), int(args[2]), [str(a) for a in args[3:]])
        raise ReplyError(f"ERR the embedded store runs scripts only, not {name}")

    def _evalsha(self, sha: str, count: int, args: list[str]) -> Any:
        script = self.scripts.get(sha)
        if script is None:
            raise ReplyError("NOSCRIPT No matching script. Please use EVAL.")
        now = int(self.clock() * 1000)
        self._begin(now)
        if now - self._swept >= SWEEP_MS:
            self._swept = now
            self._sweep()
        table = self.lua.table_from
        try:
            result = script(table(args[:count]), table(args[count:]))
        except lua51.LuaError as exc:  # the message, without Lua's stack traceback
            raise ReplyError(str(exc).split("\n", 1)[0]) from exc
        if lua51.lua_type(result) == "table":  # Redis truncates numbers to integers
            return [int(result[i]) for i in range(1, len(result) + 1)]
        return int(result)

    def size(self, now_ms: int | None = None) -> int:
        """Keys held once the expired ones are dropped (as of `now_ms`)."""
        if now_ms is not None:
            self._begin(now_ms)
        return int(self._sweep())

    def node(self, args: tuple[Any, ...]) -> str:
        """One store, in process."""
        return ""

    def abort(self, *args: Any) -> None:
        """Nothing to drop: there is no connection."""

    async def close(self) -> None:
        self.scripts.clear()
