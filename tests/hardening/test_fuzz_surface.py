"""Property-based attack on the newer routes of the live gateway (every policy on, CORS on
for one origin): rerank, tokenize and detokenize bodies, hostile model names in
`/v1/models/{model}`, and hostile `Origin` and preflight headers. Every answer gets the
checks of `Attacker.send` (no 5xx of the gateway's own, errors in OpenAI's shape, the
request ID, no credential in the logs), and each test its own promise."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening import strategies as s
from tests.hardening.attack import Attacker, Attempt
from tests.hardening.live import ORIGIN
from tests.hardening.wire import Header
from tests.support.fake_tokens import VOCAB

JSON: Header = (b"Content-Type", b"application/json")
# Mostly integers, around the vocabulary's end and int32's among them; now and then anything.
ids = st.one_of(
    st.integers(0, VOCAB - 1),
    st.sampled_from([VOCAB - 1, VOCAB, VOCAB + 1, -1, 2**31 - 1, 2**31, 2**32, -(2**63)]),
)
token_ids = st.one_of(ids, ids, ids, s.numbers, s.values)
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/v1/rerank": {
        "query": st.one_of(st.just("red apple"), s.values),
        "documents": st.one_of(st.lists(st.one_of(st.just("a red apple"), s.strings)), s.values),
        "top_n": s.lengths,
    },
    "/v1/tokenize": {
        "content": st.one_of(s.strings, st.lists(st.one_of(s.strings, token_ids)), s.values),
        "with_pieces": st.one_of(st.booleans(), s.values),
        "add_special": st.one_of(st.booleans(), s.values),
    },
    "/v1/detokenize": {"tokens": st.one_of(st.lists(token_ids, max_size=6), s.values)},
}


def key(attacker: Attacker) -> Header:
    return (b"Authorization", b"Bearer " + attacker.live.credentials.keys["premium"].encode())


@st.composite
def bodies(draw: st.DrawFn, path: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(["fake", "fake", "other", 7]))}
    for name, values in FIELDS[path].items():
        if draw(st.integers(0, 4)):
            body[name] = draw(values)
    for name in draw(st.lists(s.unknown_names, max_size=2)):
        body[name] = draw(s.values)
    return body


@settings(max_examples=400)
@given(data=st.data(), path=st.sampled_from(list(FIELDS)), raw=st.booleans())
def test_hostile_rerank_and_token_bodies_never_make_the_upstream_fail(
    attacker: Attacker, data: st.DataObject, path: str, raw: bool
) -> None:
    body = data.draw(bodies(path), label="body")
    answer = attacker.send(
        Attempt("POST", path, [key(attacker), JSON], s.encode(body, raw_surrogates=raw))
    )
    # llama-server answers a 500 to a token id past its vocabulary, or a negative top_n:
    # those must stay at the gateway as 400s, or they count against the upstream.
    assert answer.status < 500, f"{path} {body!r}: {answer.status} {answer.body[:300]!r}"


# Model names as a path segment: any code point, percent-encoded bytes of any kind (NUL,
# newline, invalid UTF-8, an encoded surrogate), slashes and dots, a long one.
model_names = st.one_of(
    st.text(max_size=30).map(lambda t: quote(t, safe="", errors="surrogatepass")),
    st.binary(max_size=20).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    st.sampled_from(
        ["fake", "fake/", "fake%2F", "%2e%2e", "../fake", "a//b", "%ED%A0%80", "%00", "x" * 6000]
    ),
)


@settings(max_examples=300)
@given(name=model_names, method=st.sampled_from(["GET", "HEAD"]))
def test_any_model_name_in_the_path_gets_the_model_or_a_clean_404(
    attacker: Attacker, name: str, method: str
) -> None:
    target = f"/v1/models/{name}".encode()
    answer = attacker.send(Attempt(method, "/v1/models/x", [key(attacker)], target=target))
    assert answer.status in (200, 400, 404), f"{target[:200]!r}: {answer.status}"
    if answer.status == 200:
        assert name == "fake", name


origins = st.one_of(
    s.header_bytes,
    st.sampled_from(
        [ORIGIN.encode(), ORIGIN.upper().encode(), ORIGIN.encode() + b"/", b"null", b"*"]
    ),
    st.sampled_from([ORIGIN.encode() + b" ", b"https://app.example.com.evil.com"]),
)


@settings(max_examples=400)
@given(
    origin=origins,
    method=st.sampled_from(["OPTIONS", "OPTIONS", "GET", "POST"]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/models", "/v1/models/fake", "/nowhere"]),
    asked_method=st.none() | s.header_bytes,
    asked_headers=st.none() | s.header_bytes,
)
def test_only_the_allowed_origin_gets_cors_headers_whatever_the_headers_say(
    attacker: Attacker,
    origin: bytes,
    method: str,
    path: str,
    asked_method: bytes | None,
    asked_headers: bytes | None,
) -> None:
    headers = [key(attacker), JSON, (b"Origin", origin)]
    if asked_method is not None:
        headers.append((b"Access-Control-Request-Method", asked_method))
    if asked_headers is not None:
        headers.append((b"Access-Control-Request-Headers", asked_headers))
    body = b'{"model":"fake","messages":[{"role":"user","content":"hi"}]}'
    answer = attacker.send(Attempt(method, path, headers, body if method == "POST" else None))
    allowed = answer.headers.get("access-control-allow-origin")
    if origin.strip(b" \t") == ORIGIN.encode():  # the parser strips the value's blanks
        assert allowed == ORIGIN, (origin, answer.status, answer.headers)
    else:
        assert allowed is None, (origin, answer.headers)
    if "access-control-allow-headers" in answer.headers:
        names = answer.headers["access-control-allow-headers"].split(", ")
        assert all(n and n.isascii() and " " not in n for n in names), names
