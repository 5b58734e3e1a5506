"""Type checks of the request fields the gateway and its policies rely on, and the
fields that decide how long an answer may be.

Everything else is the upstream's business: llama-server answers 400 for what it
cannot use, and that answer is passed through unchanged.
"""

from __future__ import annotations

from typing import Any

from gateway.endpoints import ENDPOINTS
from gateway.endpoints import LENGTHS as LENGTHS
from gateway.endpoints import READ_LENGTHS as READ_LENGTHS
from gateway.errors import GatewayError, bad_request

# Per endpoint name: the input field it requires, and of those the chat messages' arrays.
_REQUIRED = {e.name: e.input_field for e in ENDPOINTS if e.input_field}
_MESSAGES = {e.name: e.input_field for e in ENDPOINTS if e.chat and e.input_field}
_INTEGERS = ("seed",)
# Answers generated per prompt: llama-server reads `n_cmpl`, else OpenAI's `n`.
CHOICES = ("n_cmpl", "n")
_COUNTS = (*LENGTHS, *CHOICES)
# With the endpoint's own (rerank's `top_n`).
_COUNTS_OF = {e.name: (*_COUNTS, *e.counts) for e in ENDPOINTS}
# The input field that may hold token ids, per endpoint.
_TOKEN_IDS = {e.name: e.input_field for e in ENDPOINTS if e.token_ids and e.input_field}
# llama-server reads these as 32-bit integers: a larger one wraps around (2**32 - 1 is -1).
INT32_MAX = 2**31 - 1


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        if value is not None and not _is_integer(value):
            raise bad_request(f"'{name}' must be an integer, not {_type_name(value)}.", param=name)
    for name in _COUNTS_OF.get(endpoint, _COUNTS):
        value = body.get(name)
        if value is not None:
            _check_count(name, value)
    messages = _MESSAGES.get(endpoint)
    if messages is not None and not isinstance(body.get(messages), list):
        raise bad_request(f"'{messages}' must be an array of message objects.", param=messages)
    check_vocabulary(endpoint, body, INT32_MAX + 1)


def check_vocabulary(endpoint: str, body: dict[str, Any], size: int | None) -> None:
    """The token ids of an input that may hold some (tokenize's mixed `content`,
    detokenize's `tokens`) are integers below `size`: the model's vocabulary, once read
    from its upstreams (llama-server answers one out of range with a 500, which would
    count against the upstream's circuit)."""
    field = _TOKEN_IDS.get(endpoint)
    if field is None or size is None:
        return
    value = body.get(field)
    if not isinstance(value, list):  # text to tokenize, or not ours to check
        return
    for item in value:
        if isinstance(item, str):  # a piece of text, in tokenize's mixed content
            continue
        if not _is_integer(item):
            raise bad_request(
                f"'{field}' must hold token ids (integers), not {_type_name(item)}.", param=field
            )
        if not 0 <= item < size:
            raise bad_request(
                f"Invalid '{field}': {item} is not a token id of this model; ids go from 0 to "
                f"{size - 1}.",
                param=field,
                code="invalid_token_id",
            )


def _check_count(name: str, value: Any) -> None:
    """A length or a number of choices: an integer from 1 to INT32_MAX."""
    if not _is_integer(value):
        raise bad_request(f"'{name}' must be an integer, not {_type_name(value)}.", param=name)
    if not 1 <= value <= INT32_MAX:
        raise _out_of_range(name, value)


def _out_of_range(name: str, value: int) -> GatewayError:
    """OpenAI's words and codes (`integer_below_min_value`) for a number out of range."""
    low = value < 1
    which, bound = ("below minimum", ">= 1") if low else ("above maximum", f"<= {INT32_MAX}")
    hint = " Leave it out for the longest answer allowed." if name in LENGTHS else ""
    return bad_request(
        f"Invalid '{name}': integer {which} value. Expected a value {bound}, but got "
        f"{value} instead.{hint}",
        param=name,
        code="integer_below_min_value" if low else "integer_above_max_value",
    )


def cap_lengths(body: dict[str, Any], cap: int, read: tuple[str, ...] = READ_LENGTHS) -> bool:
    """Caps every length field the request names to `cap`, and makes sure `max_tokens`
    says the length llama-server will use (the first of the route's fields `read` that
    is named, else the cap): builds older than `max_completion_tokens` read only
    `n_predict` and `max_tokens`. Whether the body changed."""
    changed = False
    for name in LENGTHS:
        value = body.get(name)
        if value is not None and value > cap:
            body[name] = cap
            changed = True
    if body.get("max_tokens") is None:
        named = (body.get(name) for name in read)
        body["max_tokens"] = next((v for v in named if v is not None), cap)
        changed = True
    return changed
