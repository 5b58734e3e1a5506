"""A streamed answer assembled, as it is written to the client, into the JSON answer a
non-streaming request gets: the stored form of every answer.

It is fed through the request's tap (complete SSE events) and keeps only what the
answer says (text pieces, finish reasons, the envelope), so its memory is bounded by the
answer's text, not the stream's size. Anything it does not understand (tool calls, an
error event, per-token data) gives the answer up: it is relayed, never stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import sse
from gateway.endpoints import CHAT_COMPLETIONS

_ENVELOPE = ("id", "created", "model", "system_fingerprint")
_CHOICE_KEYS = frozenset({"index", "delta", "text", "finish_reason", "logprobs"})


class _Choice:
    __slots__ = ("finish_reason", "parts", "role")

    def __init__(self) -> None:
        self.role: str | None = None
        self.parts: dict[str, list[str]] = {}  # field -> its pieces (content, text, ...)
        self.finish_reason: Any = None


class Assembler:
    def __init__(self, endpoint: str, limit: int) -> None:
        self.chat = endpoint == CHAT_COMPLETIONS.name
        self.limit = limit  # bytes of text kept at most
        self.size = 0
        self.failed = False
        self.envelope: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.timings: Any = None

    def feed(self, data: bytes) -> None:
        """The tap: complete events, as written to the client."""
        if self.failed:
            return
        for event in sse.events(data):
            value = sse.event_json(event)
            if value is None:
                if not event.startswith(b"data: [DONE]"):
                    self.failed = not event.startswith(b":")  # a comment is harmless
                continue
            if not self._take(value):
                self.failed = True
                return
        if self.size > self.limit:
            self.failed = True

    def _take(self, chunk: dict[str, Any]) -> bool:
        if "error" in chunk:
            return False
        for name in _ENVELOPE:
            if name in chunk and name not in self.envelope:
                self.envelope[name] = chunk[name]
        if chunk.get("timings") is not None:
            self.timings = chunk["timings"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return False
        return all(isinstance(c, dict) and self._choice(c) for c in choices)

    def _choice(self, piece: dict[str, Any]) -> bool:
        index = piece.get("index", 0)
        if type(index) is not int or not piece.keys() <= _CHOICE_KEYS:
            return False
        if piece.get("logprobs") is not None:
            return False
        choice = self.choices.setdefault(index, _Choice())
        if piece.get("finish_reason") is not None:
            choice.finish_reason = piece["finish_reason"]
        if not self.chat:
            return self._add(choice, "text", piece.get("text"))
        delta = piece.get("delta")
        if not isinstance(delta, dict):
            return delta is None
        for name, value in delta.items():
            if name == "role":
                choice.role = value if isinstance(value, str) else choice.role
            elif not self._add(choice, name, value):
                return False
        return True

    def _add(self, choice: _Choice, name: str, value: Any) -> bool:
        if value is None:
            return True
        if not isinstance(value, str):
            return False  # tool calls and other structured deltas are not stored
        choice.parts.setdefault(name, []).append(value)
        self.size += len(value)
        return True

    def answer(self, usage: dict[str, Any] | None) -> bytes | None:
        """The assembled JSON answer, or None when it was given up or is empty."""
        if self.failed or not self.choices:
            return None
        answer: dict[str, Any] = dict(self.envelope)
        answer["object"] = "chat.completion" if self.chat else "text_completion"
        answer["choices"] = [self._finished(i, c) for i, c in sorted(self.choices.items())]
        if usage is not None:
            answer["usage"] = usage
        if self.timings is not None:
            answer["timings"] = self.timings
        return orjson.dumps(answer)

    def _finished(self, index: int, choice: _Choice) -> dict[str, Any]:
        texts = {name: "".join(parts) for name, parts in choice.parts.items()}
        if not self.chat:
            text = texts.get("text", "")
            return {
                "text": text,
                "index": index,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        message = {"role": choice.role or "assistant", "content": texts.pop("content", None)}
        message.update(texts)
        return {"index": index, "message": message, "finish_reason": choice.finish_reason}
