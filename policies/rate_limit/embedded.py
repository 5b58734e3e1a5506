"""The embedded store for a gateway without Redis: the very same Lua scripts, run in
process by Lua 5.1 (Redis's Lua), on a small in-memory keyspace offering the commands
the scripts use, with Redis's semantics for them (replies, expiry in milliseconds).

It answers `SCRIPT LOAD` and `EVALSHA` like a Redis server (NOSCRIPT included), behind
the same `call` interface as the Redis client, so the policy cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable
from typing import Any

from lupa import lua51

from gateway.redis_client import ReplyError


class Hash(dict[str, str]):
    pass


class SortedSet(dict[str, float]):
    """member -> score; the scripts only count and trim by score, never rank."""


Value = str | Hash | SortedSet


class Keyspace:
    """Strings, hashes and sorted sets with millisecond expiry."""

    def __init__(self) -> None:
        self.data: dict[str, Value] = {}
        self.expires: dict[str, int] = {}
        # At most one heap entry per key (its earliest deadline); a key whose deadline
        # moved later is put back when its entry comes due. Memory stays bounded by the
        # number of keys, however often their expiries are extended.
        self._heap: list[tuple[int, str]] = []
        self._scheduled: dict[str, int] = {}

    def purge(self, now: int) -> None:
        heap, scheduled = self._heap, self._scheduled
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if scheduled.get(key) != due:
                continue  # superseded by an earlier entry
            del scheduled[key]
            deadline = self.expires.get(key)
            if deadline is None:
                continue  # persisted or deleted meanwhile
            if deadline <= now:
                del self.expires[key]
                self.data.pop(key, None)
            else:
                self._schedule(key, deadline)

    def expire_at(self, key: str, deadline: int) -> int:
        if key not in self.data:
            return 0
        self.expires[key] = deadline
        current = self._scheduled.get(key)
        if current is None or deadline < current:
            self._schedule(key, deadline)
        return 1

    def _schedule(self, key: str, deadline: int) -> None:
        self._scheduled[key] = deadline
        heapq.heappush(self._heap, (deadline, key))

    def typed(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if value is not None and not isinstance(value, kind):
            raise ReplyError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return value


class Embedded:
    def __init__(self) -> None:
        self.lua = lua51.LuaRuntime(encoding="utf-8", unpack_returned_tuples=True)
        self.keys = Keyspace()
        self.now = 0  # unix ms of the script running now: Redis's time stands still in one
        self.scripts: dict[str, Any] = {}
        commands: dict[str, Callable[..., Any]] = {
            "TIME": self._time,
            "GET": self._get,
            "SET": self._set,
            "INCRBY": self._incrby,
            "EXISTS": lambda key: int(key in self.keys.data),
            "PEXPIRE": lambda key, ms: self.keys.expire_at(key, self.now + int(ms)),
            "PEXPIREAT": lambda key, at: self.keys.expire_at(key, int(at)),
            "HMGET": self._hmget,
            "HSET": self._hset,
            "ZADD": self._zadd,
            "ZREM": self._zrem,
            "ZCARD": lambda key: len(self.keys.typed(key, SortedSet) or ()),
            "ZREMRANGEBYSCORE": self._zremrangebyscore,
        }

        def call(name: str, *args: Any) -> Any:
            command = commands.get(name) or commands.get(name.upper())
            if command is None:
                raise ReplyError(f"ERR the embedded store does not offer {name}")
            return command(*args)

        self.lua.globals().redis = self.lua.table_from({"call": call})

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
        self.now = int(time.time() * 1000)
        self.keys.purge(self.now)
        table = self.lua.table_from
        result = script(table(args[:count]), table(args[count:]))
        if lua51.lua_type(result) == "table":  # Redis truncates numbers to integers
            return [int(result[i]) for i in range(1, len(result) + 1)]
        return int(result)

    def abort(self) -> None:
        """Nothing to drop: there is no connection."""

    async def close(self) -> None:
        self.keys = Keyspace()

    # The commands, with Redis's replies as the scripts see them (nil is false).

    def _time(self) -> Any:
        return self.lua.table_from([str(self.now // 1000), str(self.now % 1000 * 1000)])

    def _get(self, key: str) -> str | bool:
        value = self.keys.typed(key, str)
        return False if value is None else value

    def _set(self, key: str, value: Any, *options: str) -> Any:
        self.keys.data[key] = _text(value)
        if "KEEPTTL" not in (o.upper() for o in options):
            self.keys.expires.pop(key, None)
        return self.lua.table_from({"ok": "OK"})

    def _incrby(self, key: str, by: Any) -> int:
        current = self.keys.typed(key, str)
        value = int(current or 0) + int(by)
        self.keys.data[key] = str(value)
        return value

    def _hmget(self, key: str, *fields: str) -> Any:
        stored = self.keys.typed(key, Hash) or {}
        return self.lua.table_from([stored.get(f, False) for f in fields])

    def _hset(self, key: str, *pairs: Any) -> int:
        stored = self.keys.typed(key, Hash)
        if stored is None:
            stored = self.keys.data[key] = Hash()
        added = 0
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            added += field not in stored
            stored[field] = _text(value)
        return added

    def _zadd(self, key: str, score: Any, member: str) -> int:
        stored = self.keys.typed(key, SortedSet)
        if stored is None:
            stored = self.keys.data[key] = SortedSet()
        added = int(member not in stored)
        stored[member] = float(score)
        return added

    def _zrem(self, key: str, member: str) -> int:
        stored = self.keys.typed(key, SortedSet) or {}
        removed = int(stored.pop(member, None) is not None)
        if not stored:
            self._drop(key)
        return removed

    def _zremrangebyscore(self, key: str, low: str, high: Any) -> int:
        stored = self.keys.typed(key, SortedSet) or {}
        floor = float("-inf") if low == "-inf" else float(low)
        gone = [m for m, score in stored.items() if floor <= score <= float(high)]
        for member in gone:
            del stored[member]
        if not stored:
            self._drop(key)
        return len(gone)

    def _drop(self, key: str) -> None:
        self.keys.data.pop(key, None)
        self.keys.expires.pop(key, None)


def _text(value: Any) -> str:
    """A Lua value as Redis stores it (numbers as Lua 5.1 writes them: %.17g)."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)
