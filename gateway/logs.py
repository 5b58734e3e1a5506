"""Structured JSON logs; every line written while a request runs carries its request ID."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import re
import sys
import time
from typing import IO, Any

import orjson

# The request being handled by the current task (aiohttp runs each request in its own
# task); its `request_id` is read when a line is written, so an ID a policy sets later
# still reaches every line after it.
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "current_request", default=None
)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


# Credentials, as they appear in a finished JSON log line: header values (aiohttp's parser
# logs raw header bytes as `b'...'` reprs, whose `\\x01` escapes JSON doubles), the start of
# an over-long header line (whichever header it is), bearer tokens, gateway API keys, JWTs
# (also cut short) and passwords in URLs. One pattern, applied to each finished line, so
# messages, extra fields and tracebacks of every logger are covered. A character of a
# value: not a quote, `&` or white space, or a repr's `\\xNN` escape, or JSON's `\u00NN`
# for a raw control character.
_C = r"""(?:[^\\\s"'&]|\\\\x[0-9a-fA-F]{2}|\\u00[0-9a-fA-F]{2})"""
# A header's value runs on past `&` and a repr's other escapes (a tab, a quote, a
# backslash), which a query string's value (`name=...`) ends at `&`.
_H = r"""(?:<C>|[ \t&]|\\\\[t']|(?:\\\\){2})"""
_NAMES = r"(?:authorization|api[-_]?key|cookie|password|passwd|secret|[-_]token)"
_SECRET = re.compile(
    (
        r"""(?i)(?P<header><N>\\?["']?(?:\s|\\\\t)*(?:(?P<colon>:)|=)(?:\s|\\\\t)*"""
        r"""(?:\\?["'])?)(?(colon)<H>+|(?:<C>|[ \t])+)"""
        r"|(?P<scheme>\bbearer\s+)<C>+"
        r"""|(?P<long>bytes when reading:? b\\?["'])(?:<C>|[ \t])*"""
        r"|(?P<key>sk-gw_)<C>*"
        r"|eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}"
        r"""|(?P<url>://[^\s/@:"'\\]*:)[^\s/@"'\\]*(?=@)"""
    )
    .replace("<N>", _NAMES)
    .replace("<H>", _H)
    .replace("<C>", _C)
)
_HIDDEN = r"\g<header>\g<scheme>\g<long>\g<key>\g<url>[REDACTED]"
# Each alternative above contains one of these (lower-cased): most lines contain none, and
# looking for them costs a tenth of running the pattern.
_MARKERS = (
    "authoriz",
    "key",
    "cookie",
    "passw",
    "secret",
    "token",
    "bearer",
    "sk-gw_",
    "eyj",
    "when reading",
)
_URL = "://"


def redact(text: str) -> str:
    """`text` with every credential replaced by `[REDACTED]`."""
    low = text.lower()
    for marker in _MARKERS:
        if marker in low:
            return _SECRET.sub(_HIDDEN, text)
    return _SECRET.sub(_HIDDEN, text) if _URL in text and "@" in text else text


@functools.lru_cache(maxsize=4)
def _whole_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def timestamp(moment: float) -> str:
    """ISO 8601 UTC with milliseconds; each second is formatted once."""
    whole = int(moment)
    return f"{_whole_second(whole)}.{int((moment - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(current_request.get(), "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            text = orjson.dumps(line, default=str)
        except TypeError:  # text orjson refuses (a lone surrogate): the line is still written
            text = orjson.dumps(printable(line), default=str)
        return redact(text.decode())


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    def handleError(self, record: logging.LogRecord) -> None:
        # logging's own report would print the record's raw message and arguments.
        line = {"level": "error", "logger": "gateway.logs", "msg": "a log line was lost"}
        with contextlib.suppress(Exception):
            self.stream.write(orjson.dumps(line).decode() + "\n")


def printable(value: Any) -> Any:
    """`value` with every string made encodable (lone surrogates escaped)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    return value


def setup_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by the gateway's richer access line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Every line, aiohttp's parser errors with their raw header bytes included, must pass
    # through the redacting formatter: no logger of aiohttp's may write elsewhere.
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


AIOHTTP_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
)
