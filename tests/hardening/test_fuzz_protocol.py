"""Malformed HTTP against the live gateway's socket: request heads no client library sends.

Whatever the bytes, the gateway answers no 500, keeps serving (a normal request after
each attack succeeds), writes no credential into any log line (aiohttp's own parser
logs the raw bytes of a header it refuses), and answers JSON in OpenAI's shape whenever
it answers JSON. Which protocol errors can be answered in JSON at all is aiohttp's
decision; the last test pins down those the gateway promises.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening.attack import still_serving
from tests.hardening.checks import check_error_shape, check_no_leak
from tests.hardening.live import Credentials, LiveGateway
from tests.hardening.wire import parse, send_raw

CHAT = orjson.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]})
CONTROL = [bytes([c]) for c in [*range(0x20), 0x7F] if c != 0x09]


def head(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def post(*headers: bytes, body: bytes = CHAT) -> bytes:
    start = (b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1")
    return head(*start, *headers, b"Content-Type: application/json", body=body)


def with_length(*headers: bytes, body: bytes = CHAT) -> bytes:
    return post(b"Content-Length: %d" % len(body), *headers, body=body)


@st.composite
def attacks(draw: st.DrawFn, creds: Credentials) -> bytes:
    """One malformed request; the credential in it is real, so a leak would be one."""
    key = draw(st.sampled_from([*creds.keys.values(), *creds.tokens.values()])).encode()
    auth = b"Authorization: Bearer " + key
    control = draw(st.sampled_from(CONTROL))
    kind = draw(st.sampled_from(KINDS))
    if kind == "control char in a header":
        where = draw(st.sampled_from(["after", "inside", "before"]))
        value = {"after": key + control, "inside": key[:20] + control + key[20:]}.get(
            where, control + key
        )
        return with_length(b"Authorization: Bearer " + value)
    if kind == "control char in another header":
        return with_length(auth, b"X-Note: a" + control + b"b")
    if kind == "over-long header":
        size = draw(st.integers(8_191, 40_000))
        return with_length(auth + b"x" * size)
    if kind == "over-long request line":
        return head(
            b"GET /v1/models?" + b"q" * draw(st.integers(8_191, 40_000)) + b" HTTP/1.1", auth
        )
    if kind == "too many headers":
        return with_length(auth, *[b"X-H%d: 1" % i for i in range(draw(st.integers(100, 400)))])
    if kind == "bad content-length":
        value = draw(
            st.sampled_from(
                [b"-1", b"-100", b"abc", b"1e3", b"+5", b"0x10", b" ", b"99999999999999999999"]
            )
        )
        return post(auth, b"Content-Length: " + value)
    if kind == "two content-lengths":
        return post(auth, b"Content-Length: %d" % len(CHAT), b"Content-Length: 5")
    if kind == "transfer-encoding with content-length":
        return post(
            auth,
            b"Transfer-Encoding: chunked",
            b"Content-Length: %d" % len(CHAT),
            body=b"5\r\nhello\r\n0\r\n\r\n",
        )
    if kind == "bad chunked body":
        chunks = draw(
            st.sampled_from(
                [
                    b"zz\r\nhello\r\n0\r\n\r\n",
                    b"5\r\nhi\r\n",
                    b"ffffffffffffffffffff\r\nx\r\n",
                    b"5;\x01ext\r\nhello\r\n0\r\n\r\n",
                    b"-5\r\nhello\r\n0\r\n\r\n",
                    b"5\r\nhelloXX0\r\n\r\n",
                ]
            )
        )
        return post(auth, b"Transfer-Encoding: chunked", body=chunks)
    if kind == "odd transfer-encoding":
        te = draw(
            st.sampled_from([b"gzip", b"chunked, gzip", b"identity", b"chunked\x0b", b"xchunked"])
        )
        return post(auth, b"Transfer-Encoding: " + te, body=b"5\r\nhello\r\n0\r\n\r\n")
    if kind == "non-ASCII header name":
        name = draw(st.sampled_from([b"X-\xff", b"Auth\xc3\xa9", b"X Y", b"", b"X-(a)", b"X\x01"]))
        return with_length(auth, name + b": 1")
    if kind == "duplicate content-type":
        return with_length(auth, b"Content-Type: text/plain")
    if kind == "HTTP/0.9 or odd version":
        line = draw(
            st.sampled_from(
                [
                    b"GET /health",
                    b"GET /health HTTP/0.9",
                    b"GET /health HTTP/2.0",
                    b"GET /health HTTP/1.1x",
                    b"GET /health http/1.1",
                    b"GET  /health HTTP/1.1",
                ]
            )
        )
        return head(line, auth)
    if kind == "odd method":
        method = draw(st.sampled_from([b"G\x01ET", b"GE T", b"X" * 2000, b"\xffGET", b"get"]))
        return head(method + b" /v1/models HTTP/1.1", b"Host: x", auth)
    # pipelined: a valid request, then garbage on the same connection
    garbage = draw(st.binary(min_size=1, max_size=200))
    return with_length(auth) + draw(st.sampled_from([garbage, b"GET / HTTP/1.1\r\n" + garbage]))


KINDS = [
    "control char in a header", "control char in another header", "over-long header",
    "over-long request line", "too many headers", "bad content-length", "two content-lengths",
    "transfer-encoding with content-length", "bad chunked body", "odd transfer-encoding",
    "non-ASCII header name", "duplicate content-type", "HTTP/0.9 or odd version", "odd method",
    "pipelined garbage",
]  # fmt: skip


def check_answers(raw: bytes) -> None:
    """No 500 anywhere in what came back (pipelining may give several answers); the first
    answer, when it is JSON, is in OpenAI's shape."""
    assert b"HTTP/1.1 500" not in raw, f"a 500: {raw[:400]!r}"
    assert b"HTTP/1.0 500" not in raw, f"a 500: {raw[:400]!r}"
    answer = parse(raw)
    if answer is not None and answer.headers.get("content-type", "").startswith("application/json"):
        check_error_shape(answer, [], head=False)


@settings(max_examples=300)
@given(data=st.data())
def test_malformed_http_gets_no_500_and_leaks_nothing(
    served: LiveGateway, data: st.DataObject
) -> None:
    attack = data.draw(attacks(served.credentials), label="request")
    mark = served.lines.mark()
    raw = served.run(send_raw(served.port, attack, seconds=30, end_after=0.5))
    check_answers(raw)
    served.run(still_serving(served))
    check_no_leak(served.lines.since(mark), served.credentials.secrets())


# Protocol errors the gateway answers in OpenAI's shape (docs/api.md, "Errors").
JSON_ERRORS = {
    "control char in a header value": post(b"Content-Length: 2", b"X-Note: a\x01b", body=b"{}"),
    "over-long header line": post(b"Content-Length: 2", b"X-Note: " + b"x" * 9000, body=b"{}"),
    "negative content-length": post(b"Content-Length: -1", body=b"{}"),
    "transfer-encoding with content-length": post(
        b"Transfer-Encoding: chunked", b"Content-Length: 7", body=b"2\r\n{}\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", list(JSON_ERRORS))
def test_protocol_errors_get_an_openai_shaped_400(served: LiveGateway, name: str) -> None:
    raw = served.run(send_raw(served.port, JSON_ERRORS[name], seconds=30, end_after=1))
    answer = parse(raw)
    assert answer is not None, f"{name}: no answer at all ({raw[:200]!r})"
    assert answer.status == 400, f"{name}: {answer.status}"
    assert answer.headers.get("content-type", "").startswith("application/json"), (
        f"{name}: answered {answer.headers.get('content-type')}: {answer.body[:200]!r}"
    )
    check_error_shape(answer, [], head=False)
