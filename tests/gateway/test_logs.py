"""No log line of any logger contains a credential, whatever bytes a client sends."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import STATE
from gateway.logs import AIOHTTP_LOGGERS, JsonFormatter, redact, setup_logging
from tests.support.processes import start_gateway

KEY = f"sk-gw_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
JWT = "eyJ" + ".".join(secrets.token_urlsafe(n) for n in (20, 40, 32))
TOKEN = secrets.token_urlsafe(24)
COOKIE = secrets.token_urlsafe(24)
PASSWORD = secrets.token_urlsafe(12)
SECRETS = {"api key": KEY, "jwt": JWT, "token": TOKEN, "cookie": COOKIE}


def pieces(secret: str) -> set[str]:
    """Every 8-character piece: a log line may hold none of them."""
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def assert_no_secret(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        leaked = sorted(p for p in pieces(secret) if p in text)
        assert not leaked, f"{secret!r} leaked: {leaked[:3]}"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Invalid header value char: b'Authorization: Bearer {KEY}\\x01z'", KEY),
        (f"b'Authorization: Bearer {KEY[:10]}\\x01{KEY[10:]}'", KEY),
        (f"Got more than 8190 bytes when reading: b'Bearer {KEY}AAAA...'", KEY),
        (f"b'api-key: \\xff{KEY}'", KEY),
        (f"b'X-Api-Key: {TOKEN}\\x7f'", TOKEN),
        (f"b'Cookie: session={COOKIE}; theme=dark\\x01'", COOKIE),
        (f"Got more than 8190 bytes when reading: b'session={COOKIE}xxxx...'", COOKIE),
        (f"{{'Authorization': 'Bearer {TOKEN}'}}", TOKEN),
        (f"token {JWT} refused", JWT),
        (f"token {JWT[:60]}...", JWT[:60]),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0 unreachable", PASSWORD),
        (f"postgresql://gateway:{PASSWORD}@db/usage failed", PASSWORD),
        (f"GET /x?password={PASSWORD}&page=2", PASSWORD),
        (f"a raw control character: Authorization: Bearer {TOKEN[:9]}\x01{TOKEN[9:]}", TOKEN),
        (f"b'Authorization:\\tBasic {TOKEN}\\x00'", TOKEN),
        (f"b'Authorization: Bearer a&{TOKEN}\\x01'", TOKEN),
        (f"b'Authorization: Bearer \\'{TOKEN}\"\\x01'", TOKEN),
        (f"b'Authorization: Bearer \\\\{TOKEN}\\x01'", TOKEN),
    ],
)
def test_every_kind_of_credential_is_redacted_in_a_json_line(text: str, secret: str) -> None:
    line = orjson.dumps({"msg": text}).decode()
    redacted = redact(line)
    assert_no_secret(redacted, secret)
    assert "[REDACTED]" in redacted
    orjson.loads(redacted)  # still one valid JSON line


@pytest.mark.parametrize(
    "text",
    [
        "upstream http://127.0.0.1:8080 is down",
        "prompt_tokens=12 completion_tokens=30",
        "listening on 0.0.0.0:8080",
        "key:3f9a0c1b2d4e refused: quota exhausted",
    ],
)
def test_lines_without_credentials_are_left_alone(text: str) -> None:
    line = orjson.dumps({"msg": text}).decode()
    assert redact(line) == line


def record(msg: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_tracebacks_are_redacted() -> None:
    try:
        raise ValueError(f"bad header b'Authorization: Bearer {TOKEN}\\x01'")
    except ValueError as exc:
        line = JsonFormatter().format(record("Error handling request", exc=exc))
    assert "Traceback" in orjson.loads(line)["exc"]
    assert_no_secret(line, TOKEN)


def test_a_lone_surrogate_does_not_lose_the_line() -> None:
    line = orjson.loads(JsonFormatter().format(record("subject %s refused", "\ud800x")))
    assert line["msg"] == "subject \\ud800x refused"


def test_aiohttp_loggers_write_through_the_redacting_formatter() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", stream)
    try:
        for name in AIOHTTP_LOGGERS:
            logger = logging.getLogger(name)
            assert logger.handlers == []
            assert logger.propagate
        logging.getLogger("aiohttp.server").error("Authorization: Bearer %s", TOKEN)
        logging.getLogger("aiohttp.access").warning("Cookie: %s", COOKIE)
    finally:
        logging.getLogger().handlers.clear()
    written = stream.getvalue()
    assert written.count("[REDACTED]") == 2
    assert_no_secret(written, TOKEN, COOKIE)


HOST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
TAIL = b"Content-Length: 2\r\n\r\n{}"
HOSTILE = [
    HOST + b"Authorization: Bearer " + KEY.encode() + b"\x01z\r\n" + TAIL,
    HOST + b"Authorization: Bearer " + KEY[:10].encode() + b"\x01" + KEY[10:].encode() + b"\r\n",
    HOST + b"Authorization: Bearer " + KEY.encode() + b"A" * 9000 + b"\r\n" + TAIL,
    HOST + b"Authorization: Bearer " + JWT.encode() + b"\x01\r\n" + TAIL,
    HOST + b"Auth\x01orization: Bearer " + TOKEN.encode() + b"\r\n" + TAIL,
    HOST + b"x-api-key: " + TOKEN.encode() + b"\x7f\r\n" + TAIL,
    HOST + b"api-key: \xff" + KEY.encode() + b"\x00\r\n" + TAIL,
    HOST + b"Cookie: session=" + COOKIE.encode() + b"\x01\r\n" + TAIL,
    HOST + b"Cookie: session=" + COOKIE.encode() + b"x" * 9000 + b"\r\n" + TAIL,
    HOST + b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: -1\r\n\r\n",
    HOST + b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Encoding: gzip\r\n" + TAIL,
]


async def send(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()


async def test_hostile_headers_leave_no_credential_in_any_log_line(
    fake_url: str, tmp_path: Path
) -> None:
    gw = await start_gateway(fake_url, tmp_path, 5, "logging: {level: DEBUG}\n")
    try:
        port = int(gw.url.rsplit(":", 1)[1])
        answers = [await send(port, raw) for raw in HOSTILE]
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.stderr is not None
        written = (await asyncio.wait_for(gw.proc.stderr.read(), 30)).decode()
        await asyncio.wait_for(gw.proc.wait(), 30)
    finally:
        if gw.proc.returncode is None:
            gw.proc.kill()
            await gw.proc.wait()
    assert all(a.startswith(b"HTTP/1.") for a in answers)
    lines = [orjson.loads(line) for line in written.splitlines()]
    assert sum(line["logger"] == "aiohttp.server" for line in lines) >= 8
    assert_no_secret(written, *SECRETS.values())


async def test_text_a_refused_request_carried_is_redacted_in_its_access_line(
    gateway: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # A refused request's text is the client's own (a model name it made up, say), so
    # its access line passes the redaction; a served one's fields are the gateway's.
    body = {"model": KEY, "messages": [{"role": "user", "content": "hi"}]}
    resp = await gateway.post("/v1/chat/completions", json=body)
    assert resp.status == 404
    await gateway.app[STATE].relay.drain()
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if '"gateway.access"' in line]
    assert_no_secret(line, KEY)
    assert orjson.loads(line)["model"] == "sk-gw_[REDACTED]"
