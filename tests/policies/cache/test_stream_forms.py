"""A stored answer replayed as SSE and a stream assembled into a stored answer agree."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway import sse
from policies.cache.assemble import Assembler
from policies.cache.entry import answer_of
from policies.cache.replay import replay
from tests.support.fake_answers import Shape

TEXT = st.text(max_size=40)
FINISH = st.sampled_from(["stop", "length"])
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
SCALAR = st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=5)
# Answer-like values: the keys a replay reads, holding anything.
JSONISH = st.recursive(
    SCALAR | st.sampled_from(["stop", "length"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "message",
                    "text",
                    "finish_reason",
                    "index",
                    "role",
                    "content",
                    "usage",
                    "id",
                    "tool_calls",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)


def chat_answer(contents: list[tuple[str, str]]) -> dict[str, Any]:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        for i, (text, finish) in enumerate(contents)
    ]
    return {
        "id": "c1",
        "created": 7,
        "model": "m",
        "object": "chat.completion",
        "choices": choices,
        "usage": USAGE,
    }


def text_answer(contents: list[tuple[str, str]]) -> dict[str, Any]:
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
        for i, (text, finish) in enumerate(contents)
    ]
    return {
        "id": "c1",
        "created": 7,
        "model": "m",
        "object": "text_completion",
        "choices": choices,
        "usage": USAGE,
    }


def assembled(endpoint: str, stream: bytes, usage: Any = USAGE) -> Any:
    assembler = Assembler(endpoint, 1 << 20)
    assembler.feed(stream)
    body = assembler.answer(usage)
    return None if body is None else orjson.loads(body)


@given(st.lists(st.tuples(TEXT, FINISH), min_size=1, max_size=3))
def test_a_chat_answer_replayed_and_assembled_is_the_same(contents: list[tuple[str, str]]) -> None:
    answer = chat_answer(contents)
    stream = replay("chat.completions", orjson.dumps(answer), wants_usage=False)
    assert stream.endswith(sse.DONE)
    assert assembled("chat.completions", stream) == answer


@given(st.lists(st.tuples(TEXT, FINISH), min_size=1, max_size=3))
def test_a_text_answer_replayed_and_assembled_is_the_same(contents: list[tuple[str, str]]) -> None:
    answer = text_answer(contents)
    stream = replay("completions", orjson.dumps(answer), wants_usage=False)
    assert assembled("completions", stream) == answer


def test_the_usage_event_is_replayed_only_when_asked() -> None:
    body = orjson.dumps(chat_answer([("hello", "stop")]))
    events = [sse.event_json(e) for e in sse.events(replay("chat.completions", body, True))]
    assert events[-2] is not None
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == USAGE
    plain = replay("chat.completions", body, False)
    assert b'"usage"' not in plain


def test_the_replay_has_llama_servers_shape() -> None:
    body = orjson.dumps(chat_answer([("hello", "stop")]))
    events = [sse.event_json(e) for e in sse.events(replay("chat.completions", body, False))]
    assert [e and e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": None},
        {"content": "hello"},
        {},
        None,  # [DONE]
    ]
    assert events[2] is not None
    assert events[2]["choices"][0]["finish_reason"] == "stop"
    assert all(e is None or e["object"] == "chat.completion.chunk" for e in events)


def test_the_fakes_stream_assembles_into_its_plain_answer() -> None:
    shape = Shape(False, 1, {})
    stream = b"".join(shape.events(3, None)) + sse.DONE
    answer = assembled("chat.completions", stream)
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert answer_of("chat.completions", orjson.dumps(answer)) is not None


def test_a_stream_calling_a_tool_is_not_assembled() -> None:
    shape = Shape(False, 1, {"tool_call": True})
    assert assembled("chat.completions", b"".join(shape.events(3, None))) is None


def test_a_stream_with_an_error_event_is_not_assembled() -> None:
    stream = b"".join(Shape(False, 1, {}).events(2, None))[:-2] + b'\n\ndata: {"error": {}}\n\n'
    assert assembled("chat.completions", stream) is None


def test_a_stream_longer_than_the_bound_is_given_up() -> None:
    assembler = Assembler("chat.completions", 10)
    assembler.feed(b"".join(Shape(False, 1, {}).events(20, None)))
    assert assembler.failed
    assert assembler.answer(USAGE) is None


def test_answers_cut_short_or_calling_tools_are_not_stored() -> None:
    for finish in ("tool_calls", "content_filter", None):
        answer = chat_answer([("x", "stop")])
        answer["choices"][0]["finish_reason"] = finish
        assert answer_of("chat.completions", orjson.dumps(answer)) is None
    calls = orjson.dumps(Shape(False, 1, {"tool_call": True}).completion({}, 3))
    assert answer_of("chat.completions", calls) is None
    assert answer_of("chat.completions", b'{"error": {"message": "no"}}') is None
    assert answer_of("chat.completions", b"not json") is None
    assert answer_of("embeddings", b'{"data": [], "usage": {}}') is not None


@given(st.binary(max_size=300) | JSONISH.map(orjson.dumps))
def test_any_stored_value_is_replayed_or_refused(body: bytes) -> None:
    for endpoint in ("chat.completions", "completions"):
        replayed = replay(endpoint, body, wants_usage=True)
        assert replayed is None or replayed.endswith(sse.DONE)
