"""The lean pipelined Redis client, on the real Redis and on Redis servers of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.redis_client import RedisClient, ReplyError, Unreachable
from tests.support.rate_limits import (
    SHARED_REDIS,
    PrivateRedis,
    free_port,
    private_redis,
    unique_prefix,
)


@pytest.fixture
async def client() -> AsyncIterator[RedisClient]:
    redis = RedisClient(SHARED_REDIS)
    yield redis
    await redis.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path) as server:
        yield server


async def test_concurrent_calls_on_one_connection_get_their_own_replies(
    client: RedisClient,
) -> None:
    values = [f"value-{i}" for i in range(500)]
    replies = await asyncio.gather(*(client.call("ECHO", v) for v in values))
    assert replies == [v.encode() for v in values]


async def test_error_reply_raises_and_the_connection_goes_on(client: RedisClient) -> None:
    key = unique_prefix()
    try:
        await client.call("SET", key, "text")
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.call("HGET", key, "field")
        assert await client.call("GET", key) == b"text"
    finally:
        await client.call("DEL", key)


async def test_lost_connection_fails_the_call_and_the_next_one_reconnects(
    own_redis: PrivateRedis,
) -> None:
    client = RedisClient(own_redis.url)
    try:
        assert await client.call("PING") == b"PONG"
        own_redis.stop()
        with pytest.raises(Unreachable):
            await client.call("PING")
        own_redis.start()
        assert await client.call("PING") == b"PONG"
    finally:
        await client.close()


async def test_password_and_database_come_from_the_url(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--requirepass", "s3cret") as server:
        client = RedisClient(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        wrong = RedisClient(f"redis://:wrong@127.0.0.1:{server.port}/0")
        try:
            info = (await client.call("CLIENT", "INFO")).decode()
            assert " db=3 " in info
            with pytest.raises(ReplyError, match=r"WRONGPASS|invalid password"):
                await wrong.call("PING")
        finally:
            await client.close()
            await wrong.close()


async def test_unreachable_server_raises_at_once() -> None:
    client = RedisClient("redis://127.0.0.1:1/0")
    with pytest.raises(Unreachable, match="cannot connect"):
        await client.call("PING")


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class PlaysRedis:
    """A TCP server of the test's own that plays Redis with `serve(reader, writer)`;
    every connection is closed and its handler awaited when the test leaves it."""

    def __init__(self, serve: Serve, port: int = 0) -> None:
        self.serve, self.port = serve, port
        self.server: asyncio.Server | None = None
        self.handlers: list[asyncio.Task[Any]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.append(task)
        self.writers.append(writer)
        try:
            await self.serve(reader, writer)
        except ConnectionError:
            pass  # the client dropped the connection: what these tests do
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


async def test_callers_waiting_for_a_connection_another_gave_up_on_get_unreachable() -> None:
    received = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):  # a Redis that hangs: reads, never answers
            received.set()

    async with PlaysRedis(silent) as port:
        client = RedisClient(f"redis://:secret@127.0.0.1:{port}/0")
        try:
            calls = [asyncio.ensure_future(client.call("PING")) for _ in range(3)]
            async with asyncio.timeout(5):
                await received.wait()  # connected; AUTH is waiting for its answer
            client.abort()  # what a caller whose time ran out does
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()
    # Not CancelledError: the callers were not cancelled, their connection failed.
    assert [type(r) for r in results] == [Unreachable] * 3


async def test_a_connection_closed_right_after_its_handshake_fails_its_callers() -> None:
    async def accept_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # AUTH
        writer.write(b"+OK\r\n")

    async with PlaysRedis(accept_then_close) as port:
        client = RedisClient(f"redis://:secret@127.0.0.1:{port}/0")
        try:
            calls = [asyncio.ensure_future(client.call("PING")) for _ in range(3)]
            async with asyncio.timeout(5):  # a bound against hanging, not a measurement
                results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()
    assert [type(r) for r in results] == [Unreachable] * 3


async def test_a_command_that_cannot_be_sent_leaves_the_replies_in_step(
    client: RedisClient,
) -> None:
    with pytest.raises(TypeError):
        await client.call("ECHO", None)
    async with asyncio.timeout(5):  # a bound against hanging, not a measurement
        replies = await asyncio.gather(client.call("ECHO", "first"), client.call("ECHO", "2nd"))
    assert replies == [b"first", b"2nd"]


async def test_a_connection_attempt_nobody_waited_for_does_not_fail_later_calls() -> None:
    port = free_port()
    client = RedisClient(f"redis://127.0.0.1:{port}/0")
    first = asyncio.ensure_future(client.call("PING"))
    await asyncio.sleep(0)  # it starts connecting to a port nobody listens on...
    first.cancel()  # ...and its caller hangs up before that fails
    await asyncio.gather(first, return_exceptions=True)

    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            writer.write(b"+PONG\r\n")

    try:
        async with PlaysRedis(pong, port):  # Redis is back
            assert await client.call("PING") == b"PONG"
    finally:
        await client.close()
