"""A lean Redis client for the request path: one pipelined connection per process.

Policies share it as the `redis` resource (`storage.redis_url`). Commands from every
concurrent request go down one connection without waiting for each other, and replies
come back in order (Redis answers one connection's commands first in, first out), so a
call costs one write and one read callback, not a pool checkout. hiredis parses replies.

A call either returns the reply, or raises `ReplyError` (an error reply such as
NOSCRIPT) or `Unreachable` (cannot connect; `ConnectionLost`: lost with the call in
flight, which may have run). Time bounds are the
caller's (`asyncio.timeout`); a caller that gives up should `abort()`, so that the next
call starts on a fresh connection instead of queueing behind a stuck one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis


class ReplyError(Exception):
    """Redis answered with an error (`NOSCRIPT ...`, `WRONGTYPE ...`)."""


class Unreachable(Exception):
    """No connection to Redis, or it was lost with the call in flight."""


class ConnectionLost(Unreachable):
    """The connection was lost with the call sent or about to be: it may have run."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # Commands issued in one turn of the event loop go out in one write.
        self.unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted
                assert self.transport is not None
                self.transport.abort()
                return
            future = self.waiting.popleft()
            if future.done():  # its caller gave up; the reply is still its own
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionLost(f"connection lost: {exc or 'closed by Redis'}"))

    def call(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        # Packed first: a command that cannot be sent (TypeError) must not leave a future
        # behind that would take the next command's reply.
        command = hiredis.pack_command(args)
        future = self.loop.create_future()
        if self.lost:  # lost after the caller got it: nothing will ever answer here
            future.set_exception(Unreachable("connection lost before the call was sent"))
            return future
        self.waiting.append(future)
        if not self.unsent:
            self.loop.call_soon(self._flush)
        self.unsent.append(command)
        return future

    def _flush(self) -> None:
        unsent, self.unsent = self.unsent, []
        if self.transport is not None and not self.lost:
            self.transport.write(b"".join(unsent))


class RedisClient:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.unix_path = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        db = query.get("db", [""])[0] or (parts.path.strip("/") if not self.unix_path else "")
        self.db = int(db or 0)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def call(self, *args: Any) -> Any:
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connection()
        return await conn.call(args)

    async def call_asking(self, *args: Any) -> Any:
        """`ASKING` and then `args`, back to back on one connection (a Redis Cluster node
        that imports the slot of `args`' key serves it only so)."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connection()
        asking = conn.call(("ASKING",))
        # Its own answer is of no use: failing, the command's own reply says why.
        asking.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await conn.call(args)

    def node(self, args: tuple[Any, ...]) -> str:
        """Which server `args` would go to: the one there is ("")."""
        return ""

    async def _connection(self) -> _Connection:
        # Callers arriving while a connection is being made wait for that one. An attempt
        # that is over is an earlier one whose callers all gave up: not this call's.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            # Retrieved even when every waiting caller gave up first.
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # `abort()` gave the attempt up (another caller's time ran out): a caller that
            # was not cancelled itself fails like any call without a connection.
            task = asyncio.current_task()
            if connecting.cancelled() and task is not None and not task.cancelling():
                raise Unreachable("connection attempt abandoned") from None
            raise
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.unix_path:
                transport, conn = await loop.create_unix_connection(_Connection, self.unix_path)
            else:
                transport, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl
                )
        except OSError as exc:
            raise Unreachable(f"cannot connect: {exc.strerror or exc}") from exc
        # uvloop may report connection_made only after this returns.
        conn.transport = transport
        try:
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                await conn.call(("AUTH", *auth))
            if self.db:
                await conn.call(("SELECT", self.db))
        except BaseException:
            assert conn.transport is not None
            conn.transport.close()
            raise
        self._conn = conn
        return conn

    def abort(self, *args: Any) -> None:
        """Drop the connection (calls in flight fail); the next call connects again.
        (`args`, the call that gave up, matter only to a cluster.)"""
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None

    async def close(self) -> None:
        self.abort()
