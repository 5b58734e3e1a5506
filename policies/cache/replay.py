"""A stored answer replayed to a streaming client as SSE, in llama-server's shape: the
role delta, the content deltas, the finish event, the usage event when the client asked
for it (`stream_options.include_usage`), then `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from gateway import sse
from gateway.endpoints import CHAT_COMPLETIONS
from policies.cache.entry import answer_of

_ENVELOPE = ("id", "created", "model", "system_fingerprint")


def replay(endpoint: str, body: bytes, wants_usage: bool) -> bytes | None:
    """The SSE stream of a stored answer; None when it is not an answer this can replay
    (only answers `answer_of` accepts are stored, but a Redis is open to other writers)."""
    answer = answer_of(endpoint, body)
    if answer is None:
        return None
    base = {name: answer[name] for name in _ENVELOPE if name in answer}
    choices = answer.get("choices") or []
    if endpoint == CHAT_COMPLETIONS.name:
        base["object"] = "chat.completion.chunk"
        events = _chat(base, choices)
    else:
        base["object"] = "text_completion"
        events = _text(base, choices)
    if wants_usage and isinstance(answer.get("usage"), dict):
        events.append(_event({**base, "choices": [], "usage": answer["usage"]}))
    events.append(sse.DONE)
    return b"".join(events)


def _chat(base: dict[str, Any], choices: list[dict[str, Any]]) -> list[bytes]:
    first, middle, last = [], [], []
    for choice in choices:
        index = choice.get("index", 0)
        message = dict(choice.get("message") or {})
        role = message.pop("role", "assistant")
        first.append(
            {"index": index, "delta": {"role": role, "content": None}, "finish_reason": None}
        )
        said = {name: value for name, value in message.items() if value is not None}
        if said:
            middle.append({"index": index, "delta": said, "finish_reason": None})
        last.append({"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")})
    return [_event({**base, "choices": part}) for part in (first, middle, last) if part]


def _text(base: dict[str, Any], choices: list[dict[str, Any]]) -> list[bytes]:
    said, last = [], []
    for choice in choices:
        index = choice.get("index", 0)
        if choice.get("text"):
            said.append(
                {"text": choice["text"], "index": index, "logprobs": None, "finish_reason": None}
            )
        last.append(
            {
                "text": "",
                "index": index,
                "logprobs": None,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    return [_event({**base, "choices": part}) for part in (said, last) if part]


def _event(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + sse.SEPARATOR
