"""Structured JSON logs; every line written while a request runs carries its request ID."""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import time
from typing import Any

import orjson

# The request being handled by the current task (aiohttp runs each request in its own
# task); its `request_id` is read when a line is written, so an ID a policy sets later
# still reaches every line after it.
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "current_request", default=None
)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


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
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log is replaced by the gateway's richer access line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
