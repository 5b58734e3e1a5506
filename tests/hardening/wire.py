"""HTTP/1.1 in raw bytes: requests no HTTP client would send, answers read as they come.

A client library refuses or rewrites much of what an attacker sends (non-UTF-8 header
bytes, lone surrogates, odd methods, a Content-Length that lies), so the suite writes
the request bytes itself and reads the answer until the gateway closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import orjson

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; values decoded as Latin-1
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def request(
    method: str,
    target: str | bytes,
    headers: list[Header] | None = None,
    body: bytes | None = None,
) -> bytes:
    """One request with Host, Content-Length (when there is a body) and Connection: close."""
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers or []]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def exchange(port: int, data: bytes, *, head: bool = False, seconds: float = 60) -> Answer:
    """Send `data`, read until the gateway closes the connection, parse the one answer."""
    raw = await send_raw(port, data, seconds=seconds)
    answer = parse(raw, head=head)
    if answer is None:
        raise AssertionError(f"no HTTP answer to {data[:200]!r}: got {raw[:200]!r}")
    return answer


async def send_raw(port: int, data: bytes, *, seconds: float = 60, end_after: float = 0) -> bytes:
    """Everything the gateway answers to `data`, until it closes the connection. With
    `end_after`, a gateway still silent that long gets the sending side closed (an
    unfinished request head or body is then answered or dropped, not awaited)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    try:
        writer.write(data)
        await writer.drain()
        if end_after:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(end_after):
                    await _read_all(reader, received)
                    return bytes(received)
            writer.write_eof()
        async with asyncio.timeout(seconds):
            await _read_all(reader, received)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return bytes(received)


async def _read_all(reader: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await reader.read(65536):
        into += chunk


def parse(raw: bytes, *, head: bool = False) -> Answer | None:
    """The first answer in `raw`, or None when it holds no complete response head."""
    head_bytes, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep or not head_bytes.startswith(b"HTTP/1."):
        return None
    status_line, *header_lines = head_bytes.split(b"\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    status = int(status_line.split(b" ")[1])
    if head:
        return Answer(status, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return Answer(status, headers, dechunk(rest))
    length = headers.get("content-length")
    return Answer(status, headers, rest[: int(length)] if length is not None else rest)


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
