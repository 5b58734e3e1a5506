"""The access log: one JSON line per request, in the same shape as the other log lines.

Written without the standard logging machinery (its per-record cost was an eighth of the
relay's CPU time): lines are serialised with orjson and written together once per turn of
the event loop, so a burst of requests costs one write.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.logs import printable, redact, timestamp


def _stderr(data: bytes) -> None:
    sys.stderr.write(data.decode())
    sys.stderr.flush()


def _dumps(line: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # text orjson refuses (a lone surrogate): the line is still written
        return orjson.dumps(printable(line), option=orjson.OPT_APPEND_NEWLINE)


class AccessLog:
    def __init__(self, write: Callable[[bytes], Any] = _stderr) -> None:
        self._write = write
        self._pending: list[bytes] = []

    def log(self, ctx: RequestContext) -> None:
        request = ctx.request
        usage = ctx.usage or {}
        queued = ctx.queued_seconds
        variant = ctx.variant
        line = {
            "ts": timestamp(time.time()),
            "level": "info",
            "logger": "gateway.access",
            "msg": f"{request.method} {request.path} {ctx.status}",
            "request_id": ctx.request_id,
            "method": request.method,
            "path": request.path,
            "status": ctx.status,
            "outcome": ctx.outcome,
            # The model the request named; for an experiment's name, the variant serving it.
            "model": ctx.model if variant is None else variant.asked,
            "variant": None if variant is None else variant.model,
            "upstream": ctx.upstream,
            "attempts": ctx.attempts,
            "stream": ctx.stream,
            "principal": ctx.principal,
            "tier": ctx.tier,
            "duration_ms": ctx.elapsed_ms(ctx.finished),
            "ttft_ms": ctx.elapsed_ms(ctx.first_byte_at) if ctx.first_byte_at else None,
            "queued_ms": None if queued is None else round(queued * 1000, 3),
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": ctx.cached_tokens,
            "completion_tokens": usage.get("completion_tokens"),
            "client": request.remote,
            "error": ctx.error,
        }
        data = _dumps(line)
        if ctx.status >= 400 or ctx.error:
            # A refused request's model and error quote the client's own text, which may be
            # anything (a key pasted as the model name); a served request's fields are names
            # the gateway knows, and its line skips the cost of the pattern.
            data = redact(data.decode()).encode()
        self._pending.append(data)
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write(data)
