"""Server-sent events as llama-server writes them: `data: {json}\\n\\n`.

The relay never parses an event unless it must: it scans bytes for the few markers
that matter (`"usage"`, an error object) and parses only the events that carry them.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.dialects import OPENAI, Dialect

SEPARATOR = b"\n\n"
DONE = b"data: [DONE]\n\n"
# llama-server writes compact JSON; the spaced form covers other OpenAI-style servers.
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
# An error object, or an `event:` line naming an error (an event's lines start a line,
# which no JSON string in generated text can: a raw newline is escaped there).
_ERROR_MARKERS = (b'data: {"error"', b"event: error\n", b"event: response.failed\n")
# The largest token count taken from an answer: what an `integer` column holds.
MAX_COUNT = 2**31 - 1


def mentions_usage(data: bytes) -> bool:
    return _USAGE_MARKERS[0] in data or _USAGE_MARKERS[1] in data


def mentions_error(data: bytes) -> bool:
    return any(marker in data for marker in _ERROR_MARKERS)


def split_complete(data: bytes) -> tuple[bytes, bytes]:
    """(complete events, the unfinished rest) of a buffer."""
    cut = data.rfind(SEPARATOR)
    if cut < 0:
        return b"", data
    cut += len(SEPARATOR)
    return data[:cut], data[cut:]


def events(data: bytes) -> list[bytes]:
    """Complete events of `data` (which ends on a separator), each with its separator."""
    return [part + SEPARATOR for part in data.split(SEPARATOR)[:-1]]


def event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's `data:` line(s), or None (e.g. `[DONE]`, comments)."""
    payload = b"".join(
        line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    )
    if not payload or payload == b"[DONE]":
        return None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def body_usage(body: bytes, dialect: Dialect = OPENAI) -> tuple[dict[str, Any] | None, int | None]:
    """The usage of a non-streaming JSON answer, in the gateway's shape, and its
    `cached_tokens`."""
    if not mentions_usage(body):
        return None, None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    usage = dialect.body_usage(value) if isinstance(value, dict) else None
    if usage is None:
        return None, None
    return usage, cached_tokens(value, usage)


def cached_tokens(answer: dict[str, Any], usage: dict[str, Any]) -> int | None:
    """Prompt tokens the upstream took from its prompt (KV) cache, as an answer (or a
    stream's usage event) reports them: `usage.prompt_tokens_details.cached_tokens`
    (llama-server builds since 2026; the gateway's shape of every dialect's usage), else
    llama.cpp's `timings.cache_n`; None when neither is a count (absent, not an integer,
    negative, or beyond a 32-bit column)."""
    details = usage.get("prompt_tokens_details")
    if type(details) is dict:
        count = details.get("cached_tokens")
        if type(count) is int and 0 <= count <= MAX_COUNT:
            return count
    timings = answer.get("timings")
    if type(timings) is dict:
        count = timings.get("cache_n")
        if type(count) is int and 0 <= count <= MAX_COUNT:
            return count
    return None


def upstream_message(body: bytes, limit: int = 200) -> str:
    """The message of an upstream error answer, for logs."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:limit].decode("utf-8", "replace")
    error = value.get("error") if isinstance(value, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message if message is not None else value)[:limit]
