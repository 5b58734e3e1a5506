"""A stored answer: the non-streamed JSON answer, its usage and when it was stored.

One neutral form for every way of asking: a streamed answer is assembled into it
(`policies.cache.assemble`) and replayed from it as SSE (`policies.cache.replay`). In
Redis it is one value, zlib-compressed behind a version byte:

    version (1 byte) | zlib( stored_at (f64) | usage length (u32) | usage JSON | body )

so a hit reads the body without parsing it.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.endpoints import CHAT_COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES

FORMAT = b"\x01"
_HEAD = struct.Struct("!dI")
# Answers cut short, filtered or calling tools are never stored.
FINISHED = frozenset({"stop", "length"})
# The same for Anthropic's stop reasons.
STOPPED = frozenset({"end_turn", "max_tokens", "stop_sequence"})
# zlib's level 1: most of level 6's saving on JSON answers for a fraction of its time.
LEVEL = 1
# The most a stored value inflates to: the largest `max_entry_bytes` and room for usage.
MAX_INFLATED = 65 * 1024 * 1024


@dataclass(slots=True)
class Entry:
    body: bytes  # the JSON answer as a non-streaming client gets it
    usage: dict[str, Any] | None
    stored_at: float = field(default_factory=time.time)

    @property
    def size(self) -> int:
        return len(self.body)

    def age(self) -> int:
        """Whole seconds since it was stored (the `Age` header)."""
        return max(0, int(time.time() - self.stored_at))

    def tokens(self) -> int:
        """The tokens it stands for: what a hit saves the upstream."""
        usage = self.usage or {}
        total = usage.get("total_tokens")
        if type(total) is int and total >= 0:
            return total
        parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return sum(p for p in parts if type(p) is int and p >= 0)


def encode(entry: Entry) -> bytes:
    usage = orjson.dumps(entry.usage)
    raw = _HEAD.pack(entry.stored_at, len(usage)) + usage + entry.body
    return FORMAT + zlib.compress(raw, LEVEL)


def decode(value: bytes) -> Entry | None:
    """The entry, or None for a value this version cannot read (another format, damage)."""
    if not value.startswith(FORMAT):
        return None
    try:
        # Bounded: a value under the cache's keys that inflates past any answer the
        # cache stores (a damaged or planted one) is refused, not inflated.
        inflater = zlib.decompressobj()
        raw = inflater.decompress(value[1:], MAX_INFLATED)
        if inflater.unconsumed_tail or not inflater.eof:  # too large, or cut short
            return None
        stored_at, length = _HEAD.unpack_from(raw)
        start = _HEAD.size
        usage = orjson.loads(raw[start : start + length])
    except (zlib.error, struct.error, orjson.JSONDecodeError):
        return None
    # A time that is no time (inf, nan) would make the `Age` header fail.
    if not math.isfinite(stored_at) or (usage is not None and not isinstance(usage, dict)):
        return None
    return Entry(raw[start + length :], usage, stored_at)


def answer_of(endpoint: str, body: bytes) -> dict[str, Any] | None:
    """The parsed answer when it may be stored: complete, no tool calls; else None."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict) or "error" in answer:
        return None
    if endpoint == EMBEDDINGS.name:
        return answer if isinstance(answer.get("data"), list) else None
    if endpoint == RESPONSES.name:
        return answer if _plain_response(answer) else None
    if endpoint == MESSAGES.name:
        return answer if _plain_anthropic(answer) else None
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    chat = endpoint == CHAT_COMPLETIONS.name
    for choice in choices:
        if not isinstance(choice, dict):
            return None
        reason = choice.get("finish_reason")
        if not isinstance(reason, str) or reason not in FINISHED:
            return None
        if chat and not _plain_message(choice.get("message")):
            return None
        if not chat and not isinstance(choice.get("text"), str):
            return None
    return answer


def _plain_response(answer: dict[str, Any]) -> bool:
    """A completed Responses API answer whose every output is a message of text."""
    output = answer.get("output")
    if answer.get("status") != "completed" or not isinstance(output, list) or not output:
        return False
    for item in output:
        if not isinstance(item, dict) or item.get("type") != "message":
            return False  # a function call, reasoning, ...
        content = item.get("content")
        if not isinstance(content, list) or not all(
            isinstance(part, dict) and part.get("type") == "output_text" for part in content
        ):
            return False
    return True


def _plain_anthropic(answer: dict[str, Any]) -> bool:
    """A finished Messages API answer made of text blocks alone (no tool use)."""
    content, reason = answer.get("content"), answer.get("stop_reason")
    if answer.get("type") != "message" or not isinstance(reason, str) or reason not in STOPPED:
        return False
    return isinstance(content, list) and all(
        isinstance(block, dict) and block.get("type") == "text" for block in content
    )


def _plain_message(message: Any) -> bool:
    """A chat message that says something and calls no tool."""
    return isinstance(message, dict) and not message.get("tool_calls")
