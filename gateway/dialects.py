"""The API families the gateway serves, and what differs between them: the shape of an
error, where usage is in an answer and in a stream, and how a stream ends.

- OpenAI's chat and completions (and embeddings): `{"error": {...}}`, `usage` with
  `prompt_tokens`/`completion_tokens`, `data:`-only events ending with `data: [DONE]`.
- OpenAI's Responses API: the same errors; `usage` with `input_tokens`/`output_tokens`;
  `event:` lines, the usage in `response.completed`, which ends the stream.
- Anthropic's Messages API: `{"type": "error", "error": {"type": ..., "message": ...}}`;
  `usage` with `input_tokens` (the part of the prompt not read from a cache), cache
  reads apart and `output_tokens`; `message_start` carries the prompt's usage,
  `message_delta` the answer's, `message_stop` ends the stream.

Whatever the family, the gateway keeps usage in one shape (`ctx.usage`): OpenAI chat's
`prompt_tokens`, `completion_tokens`, `total_tokens` and, when known,
`prompt_tokens_details.cached_tokens`. Every reader of usage (rate limits, usage rows,
metrics, the access log, the cache) reads that shape alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError

Usage = dict[str, Any]


def _count(usage: Mapping[str, Any], name: str) -> int | None:
    value = usage.get(name)
    return value if type(value) is int and value >= 0 else None


def _usage(prompt: int | None, completion: int | None, cached: int | None) -> Usage:
    usage: Usage = {"prompt_tokens": prompt or 0, "completion_tokens": completion or 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


class Dialect:
    """OpenAI's chat and completions: the gateway's own shapes, passed on as they are."""

    name = "openai"
    # A stream reports usage only when asked (`stream_options.include_usage`).
    asks_usage = True
    # The marker of a stream's last event: the whole answer has been sent.
    stream_end = b"data: [DONE]\n\n"

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps({"error": err.as_dict()})

    def error_response(
        self, err: GatewayError, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return err.response(headers, body=self.error_body(err))

    def error_event(self, err: GatewayError, sent: int) -> bytes:
        """The error as a stream's last event, after `sent` events (OpenAI's SDK raises
        `APIError` on an event whose data has an `error` object)."""
        return b"data: " + self.error_body(err) + b"\n\n"

    def upstream_error(self, status: int, body: bytes) -> bytes:
        """An upstream's error answer as this family's clients expect it (llama-server
        answers every route's errors in OpenAI's shape)."""
        return body

    def stream_error(self, ready: bytes) -> bytes:
        """Complete events of which one or more is an upstream's error, as this family's
        clients expect them."""
        return ready

    def body_usage(self, answer: Mapping[str, Any]) -> Usage | None:
        """The usage of a whole JSON answer, in the gateway's shape."""
        usage = answer.get("usage")
        return usage if isinstance(usage, dict) else None

    def event_usage(self, event: Mapping[str, Any], before: Usage | None) -> Usage | None:
        """The usage a stream's event reports (with what earlier events said), or None."""
        return self.body_usage(event)


class Responses(Dialect):
    """OpenAI's Responses API (`/v1/responses`)."""

    name = "responses"
    asks_usage = False  # `response.completed` always carries it
    stream_end = b"event: response.completed\n"
    _FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def error_event(self, err: GatewayError, sent: int) -> bytes:
        # The fields of the API's `error` event, and OpenAI's error object as well: the
        # SDK raises `APIError` on it, as on a chat stream's, instead of ending quietly.
        value = {
            "type": "error",
            "code": err.code,
            "message": err.message,
            "param": err.param,
            "sequence_number": sent,
            "error": err.as_dict(),
        }
        return b"event: error\ndata: " + orjson.dumps(value) + b"\n\n"

    def body_usage(self, answer: Mapping[str, Any]) -> Usage | None:
        usage = answer.get("usage")
        if not isinstance(usage, dict):
            return None
        details = usage.get("input_tokens_details")
        cached = _count(details, "cached_tokens") if isinstance(details, dict) else None
        return _usage(_count(usage, "input_tokens"), _count(usage, "output_tokens"), cached)

    def event_usage(self, event: Mapping[str, Any], before: Usage | None) -> Usage | None:
        response = event.get("response")
        if event.get("type") not in self._FINAL or not isinstance(response, dict):
            return None
        return self.body_usage(response)


# Anthropic's error types by HTTP status (its SDK raises by status; the type names it).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class Messages(Dialect):
    """Anthropic's Messages API (`/v1/messages`)."""

    name = "anthropic"
    asks_usage = False  # message_start and message_delta always carry it
    stream_end = b"event: message_stop\n"
    _PROMPT = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

    def error_body(self, err: GatewayError) -> bytes:
        return _anthropic_error(err.status, err.message)

    def error_event(self, err: GatewayError, sent: int) -> bytes:
        # Its SDK raises on `event: error` (and skips events without an `event:` line).
        return b"event: error\ndata: " + self.error_body(err) + b"\n\n"

    def upstream_error(self, status: int, body: bytes) -> bytes:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and value.get("type") == "error":
            return body  # already in Anthropic's shape
        error = value.get("error") if isinstance(value, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        if not isinstance(message, str):
            message = body[:500].decode("utf-8", "replace") or f"The upstream answered {status}."
        return _anthropic_error(status, message)

    def stream_error(self, ready: bytes) -> bytes:
        # An error event without its `event:` line, which the SDK would skip.
        parts = ready.split(b"\n\n")
        for i, part in enumerate(parts):
            if part.startswith(b'data: {"error"'):
                parts[i] = b"event: error\ndata: " + self.upstream_error(500, part[6:])
        return b"\n\n".join(parts)

    def body_usage(self, answer: Mapping[str, Any]) -> Usage | None:
        return self._merge(answer.get("usage"), None)

    def event_usage(self, event: Mapping[str, Any], before: Usage | None) -> Usage | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            return self._merge(message.get("usage") if isinstance(message, dict) else None, None)
        if kind == "message_delta":
            return self._merge(event.get("usage"), before)
        return None

    def _merge(self, usage: Any, before: Usage | None) -> Usage | None:
        """The gateway's usage from Anthropic's: the prompt is the uncached input plus the
        cache reads and writes; a later event's counts replace an earlier one's."""
        if not isinstance(usage, dict):
            return None
        before = before or {}
        prompt, completion = before.get("prompt_tokens"), before.get("completion_tokens")
        details = before.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens")
        if any(name in usage for name in self._PROMPT):
            if "cache_read_input_tokens" in usage:
                cached = _count(usage, "cache_read_input_tokens")
            counts = (_count(usage, name) for name in self._PROMPT[::2])
            prompt = sum(c or 0 for c in counts) + (cached or 0)
        if "output_tokens" in usage:
            completion = _count(usage, "output_tokens")
        return _usage(prompt, completion, cached)


def _anthropic_error(status: int, message: str) -> bytes:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


OPENAI = Dialect()
RESPONSES = Responses()
MESSAGES = Messages()
