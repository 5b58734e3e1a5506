"""The answers of the fake llama-server's generation routes, in llama-server's shapes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

PROMPT_TOKENS = 5  # every generation call's prompt, as the fake counts it


# The error event llama-server sends when a stream fails after it began.
MID_STREAM_ERROR = (
    b'data: {"error":{"code":500,"message":"fake failure mid-stream","type":"server_error"}}\n\n'
)


def llama_metrics(prompt_tokens: int, predicted_tokens: int, in_flight: int) -> str:
    """A few of llama-server's own metrics, in its exposition format."""
    lines = [
        "# TYPE llamacpp:prompt_tokens_total counter",
        f"llamacpp:prompt_tokens_total {prompt_tokens}",
        "# TYPE llamacpp:tokens_predicted_total counter",
        f"llamacpp:tokens_predicted_total {predicted_tokens}",
        "# TYPE llamacpp:requests_processing gauge",
        f"llamacpp:requests_processing {in_flight}",
        "# TYPE llamacpp:requests_deferred gauge",
        "llamacpp:requests_deferred 0",
    ]
    return "\n".join(lines) + "\n"


def props_answer(model_path: str, total_slots: int) -> dict[str, Any]:
    """What llama-server's `/props` says of the model it serves and its slots."""
    settings = {"n_ctx": 4096, "params": {"temperature": 0.8, "seed": 4294967295}}
    return {
        "model_path": model_path,
        "total_slots": total_slots,
        "build_info": "b0-fake",
        "default_generation_settings": settings,
    }


def chunk_base() -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake",
    }


def sse(value: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


@dataclass(frozen=True, slots=True)
class PromptCache:
    """What an answer says of llama-server's prompt cache: `cached` tokens of the prompt
    were reused (any value: hostile ones too), in `usage.prompt_tokens_details.cached_tokens`
    (unless not `details`: builds before 2026) and in `timings.cache_n`."""

    cached: Any = 0
    details: bool = True

    def usage(self, completion: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": PROMPT_TOKENS,  # cached ones included, as llama-server counts
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
        }
        if self.details:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return usage

    def timings(self, completion: int) -> dict[str, Any]:
        reused = self.cached if type(self.cached) is int and self.cached >= 0 else 0
        return {
            "cache_n": self.cached,
            "prompt_n": max(PROMPT_TOKENS - reused, 0),
            "prompt_ms": 1.0,
            "predicted_n": completion,
            "predicted_ms": 2.0,
        }


class Shape:
    """The answer of one generation call: chat (`chat.completion`) or `text_completion`."""

    def __init__(
        self, text: bool, call: int, opts: dict[str, Any], cache: PromptCache = PromptCache()
    ) -> None:
        self.text = text
        self.cache = cache
        self.prefix = f"call{call} " if opts.get("unique") else ""
        self.finish = opts.get("finish_reason", "stop")
        self.tool_call = bool(opts.get("tool_call"))

    def events(
        self, chunks: int, final_fields: dict[str, Any] | None, text: str = "tok{i} "
    ) -> list[bytes]:
        """The stream's events; `final_fields` go into the finishing chunk (usage, timings)."""
        base = chunk_base()
        if self.text:
            base["object"] = "text_completion"
            pieces = [self.prefix + text.format(i=0), *(text.format(i=i) for i in range(1, chunks))]
            events = [sse({**base, "choices": [self._piece(p, None)]}) for p in pieces[:chunks]]
            final: dict[str, Any] = {**base, "choices": [self._piece("", self.finish)]}
        else:
            role = {"index": 0, "delta": {"role": "assistant", "content": None}}
            events = [sse({**base, "choices": [role]})]
            for i in range(chunks):
                delta: dict[str, Any] = {
                    "content": (self.prefix if i == 0 else "") + text.format(i=i)
                }
                if self.tool_call and i == 0:
                    delta = {"tool_calls": [_TOOL_CALL]}
                events.append(
                    sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                )
            final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": self.finish}]}
        if final_fields:
            final.update(final_fields)
        events.append(sse(final))
        return events

    def _piece(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    def completion(self, body: dict[str, Any], tokens: int) -> dict[str, Any]:
        text = self.prefix + " ".join(f"tok{i}" for i in range(tokens))
        if self.text:
            choice: dict[str, Any] = self._piece(text, self.finish)
            kind = "text_completion"
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.tool_call:
                message = {"role": "assistant", "content": None, "tool_calls": [_TOOL_CALL]}
            choice = {"index": 0, "message": message, "finish_reason": self.finish}
            kind = "chat.completion"
        return {
            "id": "chatcmpl-fake",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model") or "fake",  # llama-server: its own name for a null one
            "choices": [choice],
            "usage": self.cache.usage(tokens),
            "timings": self.cache.timings(tokens),
        }


_TOOL_CALL = {
    "index": 0,
    "id": "call-fake",
    "type": "function",
    "function": {"name": "lookup", "arguments": "{}"},
}
