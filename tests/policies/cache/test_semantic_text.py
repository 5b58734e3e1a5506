"""semantic_text: the last user message is the text; any other change changes the rest."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.cache.semantic import semantic_text

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.text(min_size=1).filter(str.strip)
part = st.builds(lambda t: {"type": "text", "text": t}, st.text())
content = texts | st.lists(part, min_size=1, max_size=3).filter(
    lambda parts: "\n".join(p["text"] for p in parts).strip() != ""
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}
)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    last = {"role": "user", "content": draw(content)}
    if draw(st.booleans()):
        last["name"] = draw(st.text(max_size=5))
    body: dict[str, Any] = {"messages": [*draw(st.lists(message, max_size=3)), last]}
    body.update(
        draw(st.dictionaries(st.sampled_from(["model", "temperature", "seed", "x"]), json_values))
    )
    return body


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def change_outside_text(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """The body with one change anywhere but in the last message's text."""
    changed = copy.deepcopy(body)
    where = draw(st.sampled_from(["parameter", "earlier", "last_field", "shape"]))
    if where == "parameter":
        name = draw(st.sampled_from(["model", "temperature", "seed", "max_tokens", "x"]))
        value = draw(json_values.filter(lambda v: v != body.get(name) or name not in body))
        changed[name] = value
    elif where == "earlier":
        changed["messages"].insert(-1, draw(message))
    elif where == "last_field":
        last = changed["messages"][-1]
        last["name"] = draw(st.text(max_size=5).filter(lambda n: n != last.get("name")))
    else:  # the same text, differently shaped: a string against one text part
        last = changed["messages"][-1]
        text, _ = semantic_text("chat.completions", body) or ("", None)
        last["content"] = (
            text if isinstance(last["content"], list) else [{"type": "text", "text": text}]
        )
    return changed


@settings(max_examples=300)
@given(st.data())
def test_any_change_outside_the_text_changes_the_rest(data: st.DataObject) -> None:
    body = data.draw(chat_bodies())
    changed = change_outside_text(data.draw, body)
    original, other = (
        semantic_text("chat.completions", body),
        semantic_text("chat.completions", changed),
    )
    assert original is not None
    if other is not None and canonical(changed) != canonical(body):
        assert canonical(original[1]) != canonical(other[1])


@settings(max_examples=300)
@given(chat_bodies(), texts, texts)
def test_a_change_of_the_text_alone_keeps_the_rest(body: dict[str, Any], a: str, b: str) -> None:
    first, second = copy.deepcopy(body), copy.deepcopy(body)
    first["messages"][-1]["content"] = a
    second["messages"][-1]["content"] = b
    found_a, found_b = (
        semantic_text("chat.completions", first),
        semantic_text("chat.completions", second),
    )
    assert found_a is not None
    assert found_b is not None
    assert (found_a[0], found_b[0]) == (a, b)
    assert canonical(found_a[1]) == canonical(found_b[1])


@settings(max_examples=200)
@given(st.lists(st.text(), min_size=2, max_size=3), st.lists(st.text(), min_size=2, max_size=3))
def test_text_parts_split_differently_have_different_rests(a: list[str], b: list[str]) -> None:
    def body(parts: list[str]) -> dict[str, Any]:
        content = [{"type": "text", "text": t} for t in parts]
        return {"messages": [{"role": "user", "content": content}]}

    first, second = (
        semantic_text("chat.completions", body(a)),
        semantic_text("chat.completions", body(b)),
    )
    if first is not None and second is not None and a != b and first[0] == second[0]:
        assert canonical(first[1]) != canonical(second[1])


def test_the_text_is_the_last_user_message() -> None:
    body = {
        "model": "m",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    }
    found = semantic_text("chat.completions", body)
    assert found is not None
    text, rest = found
    assert text == "What is the capital of France?"
    assert rest["messages"][:3] == body["messages"][:3]
    assert rest["messages"][3] == {"role": "user", "content": None}
    assert rest["temperature"] == 0


def test_nothing_to_compare_without_a_single_user_text() -> None:
    nothing = [
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": "   "}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        {"messages": ["user"]},
    ]
    for body in nothing:
        assert semantic_text("chat.completions", body) is None, body
    assert semantic_text("embeddings", {"input": "hello"}) is None


def test_completions_compare_a_single_prompt() -> None:
    single = semantic_text("completions", {"prompt": "Once upon a time", "max_tokens": 5})
    assert single == ("Once upon a time", {"prompt": None, "max_tokens": 5})
    listed = semantic_text("completions", {"prompt": ["Once upon a time"]})
    assert listed == ("Once upon a time", {"prompt": [None]})
    assert semantic_text("completions", {"prompt": ["a", "b"]}) is None
    assert semantic_text("completions", {"prompt": [1, 2, 3]}) is None
    assert semantic_text("completions", {"prompt": ""}) is None
