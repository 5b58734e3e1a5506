"""Hypothesis strategies for hostile requests: bodies, values, headers, routes.

Bodies are built as Python values and written by `encode`, a JSON writer of our own:
orjson and the json module refuse or escape exactly what an attacker sends (integers
beyond 64 bits, lone surrogates written raw, NaN, nesting deeper than their limits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

ENDPOINTS = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/messages": "messages",
}
# Routes whose input is a list of chat messages, and whose input may be one.
CHAT_PATHS = ("/v1/chat/completions", "/v1/messages")
TURN_PATHS = ("/v1/responses",)
LENGTHS = ("max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens", "n")


@dataclass(frozen=True)
class Nested:
    """`depth` levels of arrays or objects around a string: written without recursion."""

    depth: int
    kind: str  # "list" or "dict"

    def __repr__(self) -> str:  # a 1,100-level value stays readable in a failure report
        return f"Nested({self.depth}, {self.kind!r})"


def encode(value: Any, *, raw_surrogates: bool = False) -> bytes:
    """JSON text of `value`; lone surrogates escaped (`\\ud800`) or written raw (not UTF-8)."""
    if raw_surrogates:
        return _text(value, ascii=False).encode("utf-8", "surrogatepass")
    return _text(value, ascii=True).encode()


def _text(value: Any, *, ascii: bool) -> str:
    if isinstance(value, Nested):
        open_, close = ("[", "]") if value.kind == "list" else ('{"a":', "}")
        return open_ * value.depth + '"deep"' + close * value.depth
    if isinstance(value, dict):
        items = (f"{_text(k, ascii=ascii)}:{_text(v, ascii=ascii)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_text(v, ascii=ascii) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii)
    # None, booleans, integers of any size; NaN and Infinity come out as the bare words.
    return json.dumps(value)


# Strings: any code point, lone surrogates and NUL included; now and then a huge one.
chars = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.sampled_from(["\x00", "\u2028", "\ufeff", "\uffff", "\U0010ffff", '"', "\\"]),
)
strings = st.one_of(
    st.lists(chars, max_size=24).map("".join),
    st.integers(10_000, 400_000).map(lambda n: "x" * n),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63)]),
    st.floats(),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# A length field: mostly integers around the caps and their edges, then anything at all.
lengths = st.one_of(
    st.sampled_from([-1, 0, 100_000, -(2**63), -100, 1, 2, 15, 16, 17, 64, 2**31, 2**64 - 1]),
    st.integers(-(10**6), 10**6),
    st.integers(2**63 - 2, 2**80),
    st.floats(),
    st.booleans(),
    st.sampled_from(["100", "-1", "", "1e9"]),
    values,
)
# Names a client might invent; never "fake", which steers the fake upstream.
unknown_names = st.text(min_size=1, max_size=12).filter(lambda n: n != "fake")


def message_list(content: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": content}
    )
    return st.lists(message, min_size=1, max_size=3)


def prompt_of(path: str, content: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    if path in CHAT_PATHS:
        return message_list(content)
    if path in TURN_PATHS:
        return st.one_of(content, message_list(content))
    return st.one_of(content, st.lists(content, min_size=1, max_size=3))


@st.composite
def bodies(draw: st.DrawFn, path: str, *, hostile_lengths: bool = True) -> dict[str, Any]:
    """A valid-ish body for `path` with hostile values in its fields."""
    field = ENDPOINTS[path]
    body: dict[str, Any] = {"model": draw(st.sampled_from(["fake", "fake", "other", 7, None]))}
    body[field] = draw(prompt_of(path, st.one_of(st.just("hello"), strings)))
    if hostile_lengths:
        for name in LENGTHS:
            if draw(st.booleans()):
                body[name] = draw(lengths)
    if draw(st.booleans()):
        body["stream"] = draw(st.one_of(st.booleans(), st.booleans(), values))
    if draw(st.integers(0, 2)) == 0:
        body["stream_options"] = draw(
            st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), values)
        )
    for name in draw(st.lists(unknown_names, max_size=2)):
        body[name] = draw(values)
    if draw(st.integers(0, 3)) == 0:  # a known field of the wrong type
        known = ["model", field, "temperature", "stop", "seed", "user"]
        known += ["system", "instructions", "tools", "stop_sequences"]
        body[draw(st.sampled_from(known))] = draw(values)
    if body["model"] is None:
        del body["model"]
    return body


@st.composite
def nested_bodies(draw: st.DrawFn, path: str) -> dict[str, Any]:
    """A body with one value nested hundreds of levels deep, where a policy may walk it."""
    # Around orjson's limits (254 to write, 1,024 to read) and Python's recursion limit.
    depth = draw(
        st.one_of(
            st.sampled_from([254, 255, 900, 960, 1_000, 1_023, 1_100]), st.integers(200, 1_100)
        )
    )
    deep = Nested(depth, draw(st.sampled_from(["list", "dict"])))
    field = ENDPOINTS[path]
    where = draw(st.sampled_from(["prompt", "unknown", "stop"]))
    body: dict[str, Any] = {"model": "fake", field: draw(prompt_of(path, st.just("hi")))}
    if where == "prompt":
        body[field] = draw(prompt_of(path, st.just(deep)))
    else:
        body["stop" if where == "stop" else "metadata"] = deep
    if draw(st.booleans()):
        body["stream"] = True
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.sampled_from([1, 8, 100_000]))
    return body


# Header values an attacker controls, as bytes: non-ASCII, non-UTF-8, huge, empty. Control
# characters make aiohttp's parser refuse the request before the gateway sees it: they
# belong to the protocol fuzz (test_fuzz_protocol.py).
header_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b" ", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"x" * 4000]),
).map(lambda b: bytes(c for c in b if (c >= 0x20 and c != 0x7F) or c == 0x09))
request_ids = st.one_of(
    header_bytes,
    st.text(alphabet="abc._:@/+=-", min_size=1, max_size=300).map(str.encode),
)
traceparents = st.one_of(
    header_bytes,
    st.sampled_from([b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01", b"ff-zz", b"00--01"]),
)
content_types = st.sampled_from(
    [b"application/json", b"text/plain", b"application/x-www-form-urlencoded",
     b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b"\xff", b""]
)  # fmt: skip
content_encodings = st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"gzip, br", b"x\xff"])
