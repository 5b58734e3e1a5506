"""Type checks of the request fields the gateway and its policies rely on.

Everything else is the upstream's business: llama-server answers 400 for what it
cannot use, and that answer is passed through unchanged.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import bad_request

_REQUIRED = {"chat.completions": "messages", "completions": "prompt", "embeddings": "input"}
_INTEGERS = ("max_tokens", "max_completion_tokens", "n", "seed")


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def check_fields(endpoint: str, body: dict[str, Any]) -> None:
    required = _REQUIRED.get(endpoint)
    if required and required not in body:
        raise bad_request(f"Missing required parameter: '{required}'.", param=required)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"'model' must be a string, not {_type_name(model)}.", param="model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object.", param="stream_options")
        if not isinstance(options.get("include_usage", False), bool):
            raise bad_request(
                "'stream_options.include_usage' must be a boolean.",
                param="stream_options.include_usage",
            )
    for name in _INTEGERS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad_request(f"'{name}' must be an integer, not {_type_name(value)}.", param=name)
    messages = body.get("messages")
    if endpoint == "chat.completions" and not isinstance(messages, list):
        raise bad_request("'messages' must be an array of message objects.", param="messages")
