"""Bodies that differ in what llama-server makes of them must not share a key: it reads JSON
in order (`ordered_json`), so nested key order and number forms reach the prompt (tools
rendered by the chat template) and the grammar (a JSON schema's property order)."""

from __future__ import annotations

from typing import Any

from policies.cache.key import cache_key
from tests.support.caches import CHAT0


def key(body: dict[str, Any]) -> str | None:
    return cache_key("chat.completions", "fake", "i", "s", body)


def schema(*names: str) -> dict[str, Any]:
    properties = {name: {"type": "string"} for name in names}
    return {
        **CHAT0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": properties}},
        },
    }


def test_a_json_schemas_property_order_changes_the_key() -> None:
    # The grammar writes the properties in the order given: {"a":..,"b":..} or {"b":..,"a":..}.
    assert key(schema("a", "b")) != key(schema("b", "a"))


def tool(default: Any, *names: str) -> dict[str, Any]:
    properties = {name: {"type": "number", "default": default} for name in names}
    function = {"name": "f", "parameters": {"type": "object", "properties": properties}}
    return {**CHAT0, "tools": [{"type": "function", "function": function}]}


def test_a_tools_key_order_changes_the_key() -> None:
    # The chat template writes the tools' JSON into the prompt as sent.
    assert key(tool(1, "a", "b")) != key(tool(1, "b", "a"))


def test_a_nested_float_and_integer_change_the_key() -> None:
    # `1.0` and `1` are written out differently in the prompt.
    assert key(tool(1.0, "a")) != key(tool(1, "a"))


def test_top_level_order_and_number_forms_still_share_a_key() -> None:
    body = {**CHAT0, "max_tokens": 8, "top_k": 1}
    reordered = dict(reversed(list(body.items())))
    assert key(body) == key(reordered) == key({**body, "temperature": 0.0, "top_k": 1.0})
