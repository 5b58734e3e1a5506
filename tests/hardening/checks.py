"""The properties every answer of the live gateway must have, whatever was sent."""

from __future__ import annotations

from typing import Any

import orjson

from tests.hardening.wire import Answer

# Every length field llama-server reads (max_output_tokens: /v1/responses).
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens")
GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
# Routes whose errors are in Anthropic's shape, and those under them.
ANTHROPIC = "/v1/messages"


# Codes of the 400s the gateway's HTTP server gives requests it cannot parse: they are
# answered before the policy chain (no request ID, no usage row).
UNPARSABLE = {"header_too_large", "unsupported_content_encoding", "invalid_http_request"}


def refused_unparsed(answer: Answer) -> bool:
    """A 400 from the HTTP server for a request it could not parse (aiohttp's own plain
    text before the gateway shaped those)."""
    if answer.status != 400 or "x-request-id" in answer.headers:
        return False
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return True
    error = orjson.loads(answer.body).get("error") or {}
    return isinstance(error, dict) and error.get("code") in UNPARSABLE


def check_status(answer: Answer, upstream_statuses: list[int]) -> None:
    """No 5xx of the gateway's own making: only an upstream's own 5xx, relayed, is allowed."""
    if answer.status >= 500:
        assert answer.status in upstream_statuses, (
            f"the gateway answered {answer.status} of its own making: {answer.body[:500]!r}"
        )


def check_error_shape(
    answer: Answer, upstream_statuses: list[int], *, head: bool, path: str = "/"
) -> None:
    """Every 4xx/5xx is JSON in OpenAI's shape (an upstream's own error keeps its shape),
    or in Anthropic's at and under /v1/messages."""
    if answer.status < 400 or head:
        return
    assert answer.headers.get("content-type", "").startswith("application/json"), (
        f"{answer.status} is not JSON: {answer.headers} {answer.body[:300]!r}"
    )
    body = orjson.loads(answer.body)
    assert isinstance(body, dict), body
    # A request the HTTP server could not parse is answered before it is routed: in
    # OpenAI's shape, whatever its path.
    if (path == ANTHROPIC or path.startswith(ANTHROPIC + "/")) and not refused_unparsed(answer):
        _check_anthropic(body, answer.status)
        return
    error = body.get("error")
    assert isinstance(error, dict), body
    assert isinstance(error.get("message"), str), body
    assert error["message"], body
    if answer.status in upstream_statuses:
        return  # relayed as llama-server shaped it
    assert isinstance(error.get("type"), str), body
    assert {"message", "type", "param", "code"} <= error.keys(), body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body


def _check_anthropic(body: dict[str, Any], status: int) -> None:
    """`{"type": "error", "error": {"type": ..., "message": ...}}`, whoever refused."""
    assert body.get("type") == "error", body
    error = body.get("error")
    assert isinstance(error, dict), body
    kind, message = error.get("type"), error.get("message")
    assert isinstance(kind, str), body
    assert kind.endswith("_error") or kind == "request_too_large", body
    assert isinstance(message, str), body
    assert message, body
    if status == 401:
        assert error["type"] == "authentication_error", body
    if status == 429:
        assert error["type"] == "rate_limit_error", body


def check_lengths(received: list[tuple[str, bytes]], cap: int | None) -> None:
    """No length field llama-server reads reaches it below 1, nor above the tier's cap;
    under a cap, a generating request always names a length. llama-server reads a null
    field as not given (its `json_value` falls back to the next field, then the default),
    so a null is judged as absent."""
    for path, raw in received:
        if path not in GENERATING:
            continue
        body = orjson.loads(raw)
        named = {name: body[name] for name in LENGTH_FIELDS if body.get(name) is not None}
        for name, value in named.items():
            if cap is not None:
                assert _is_int(value), f"upstream got {name}={value!r} under a cap of {cap}"
                assert 1 <= value <= cap, f"upstream got {name}={value!r} under a cap of {cap}"
            elif _is_int(value):
                assert value >= 1, f"upstream got {name}={value!r}"
        if cap is not None:
            assert named, f"upstream got no length under a cap of {cap}: {sorted(body)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def leaks(lines: list[str], secrets: list[str]) -> list[tuple[str, str]]:
    """(secret, line) for every log line that contains one of the secrets."""
    return [(s, line) for line in lines for s in secrets if s and s in line]


def check_no_leak(lines: list[str], secrets: list[str]) -> None:
    found = leaks(lines, secrets)
    assert not found, f"a log line holds a credential {found[0][0]!r}: {found[0][1][:400]}"
