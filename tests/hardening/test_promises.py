"""The documented promises about secrets, errors and lost rows, each as a test named for it,
against the live gateway (every policy on). The fuzz suites attack the same promises
with generated inputs; these are the known attacks, kept as they were found."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import orjson
import pytest

from tests.hardening.attack import still_serving
from tests.hardening.checks import check_error_shape, check_no_leak
from tests.hardening.live import ADMIN_TOKEN, LiveGateway, make_jwt
from tests.hardening.wire import Answer, Header, exchange, request, send_raw
from tests.support.gateways import CHAT

JSON: Header = (b"Content-Type", b"application/json")


def deep(depth: int) -> bytes:
    return b"[" * depth + b'"x"' + b"]" * depth


def nested_chat(depth: int, **fields: object) -> bytes:
    """A chat body whose message content is `depth` arrays deep."""
    body = orjson.dumps({**CHAT, **fields, "messages": "@"})
    return body.replace(b'"@"', b'[{"role":"user","content":' + deep(depth) + b"}]")


def send(
    live: LiveGateway, method: str, target: str, *headers: Header, body: bytes | None = None
) -> Answer:
    answer = live.run(exchange(live.port, request(method, target, list(headers), body)))
    live.take_upstream()
    return answer


def key(live: LiveGateway, tier: str = "premium") -> Header:
    return (b"Authorization", b"Bearer " + live.credentials.keys[tier].encode())


# Client inputs that reach a serialiser, decoder or parser at its limits: each is the
# client's mistake, so a 4xx, never the gateway's own 500.
ATTACKS = {
    "stream without include_usage, nested 300 deep": lambda live: send(
        live, "POST", "/v1/chat/completions", key(live), JSON, body=nested_chat(300, stream=True)
    ),
    "a capped request nested 300 deep": lambda live: send(
        live, "POST", "/v1/chat/completions", key(live, "free"), JSON, body=nested_chat(300)
    ),
    "messages nested 1,000 deep with rate limits on": lambda live: send(
        live, "POST", "/v1/chat/completions", key(live), JSON, body=nested_chat(1_000)
    ),
    "gzip declared on a plain body": lambda live: send(
        live, "POST", "/v1/chat/completions", key(live), JSON, (b"Content-Encoding", b"gzip"),
        body=orjson.dumps(CHAT),
    ),
    "deflate declared on a plain body": lambda live: send(
        live, "POST", "/v1/chat/completions", key(live), JSON, (b"Content-Encoding", b"deflate"),
        body=orjson.dumps(CHAT),
    ),
    "a non-UTF-8 byte in Authorization": lambda live: send(
        live, "POST", "/v1/chat/completions", (b"Authorization", b"Bearer sk-\xff"), JSON,
        body=orjson.dumps(CHAT),
    ),
    "a non-UTF-8 byte in api-key": lambda live: send(
        live, "POST", "/v1/chat/completions", (b"api-key", b"\xc3\x28"), JSON,
        body=orjson.dumps(CHAT),
    ),
    "a non-UTF-8 byte in Authorization on /admin/usage": lambda live: send(
        live, "GET", "/admin/usage", (b"Authorization", b"Bearer \xff")
    ),
    "/admin/usage?since=99999999999w": lambda live: send(
        live, "GET", "/admin/usage?since=99999999999w",
        (b"Authorization", b"Bearer " + ADMIN_TOKEN.encode()),
    ),
    "a signed token whose sub is a lone surrogate": lambda live: send(
        live, "POST", "/v1/chat/completions", JSON,
        (b"Authorization", b"Bearer " + make_jwt(sub="\ud800x").encode()),
        body=orjson.dumps(CHAT),
    ),
}  # fmt: skip


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_no_client_input_gets_a_500_of_the_gateways_own_making(
    live: LiveGateway, attack: str
) -> None:
    answer = ATTACKS[attack](live)
    # A clear 4xx (the fix may also serve the request: what the promise forbids is the 500).
    assert 200 <= answer.status < 500, f"{attack}: {answer.status} {answer.body[:200]!r}"
    check_error_shape(answer, [], head=False)


def test_compressed_bodies_are_still_accepted(live: LiveGateway) -> None:
    """The other side of refusing a false Content-Encoding: a true one still works."""
    for encoding, packed in ((b"gzip", gzip.compress), (b"deflate", zlib.compress)):
        answer = send(
            live, "POST", "/v1/chat/completions", key(live), JSON,
            (b"Content-Encoding", encoding), body=packed(orjson.dumps(CHAT)),
        )  # fmt: skip
        assert answer.status == 200, (encoding, answer.status, answer.body[:200])


# Errors the gateway gives itself, one of each kind: (request, status, code).
OWN_ERRORS = {
    "missing credentials": (("POST", "/v1/chat/completions", [JSON], CHAT), 401, "invalid_api_key"),
    "wrong key": (
        ("POST", "/v1/chat/completions", [JSON, (b"Authorization", b"Bearer sk-gw_nope")], CHAT),
        401, "invalid_api_key",
    ),
    "model outside the tier": (
        ("POST", "/v1/chat/completions", [JSON, "free"], {**CHAT, "model": "other"}),
        403, "permission_denied",
    ),
    "unknown URL": (("GET", "/v2/nothing", [], None), 404, "unknown_url"),
    "not JSON": (("POST", "/v1/chat/completions", [JSON, "premium"], b"{"), 400, None),
    "wrong field type": (
        ("POST", "/v1/chat/completions", [JSON, "premium"], {**CHAT, "max_tokens": "9"}),
        400, None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OWN_ERRORS))
def test_errors_the_gateway_gives_itself_are_shaped_like_openais(
    live: LiveGateway, name: str
) -> None:
    (method, path, headers, body), status, code = OWN_ERRORS[name]
    sent = [key(live, h) if isinstance(h, str) else h for h in headers]
    raw = body if isinstance(body, bytes | None) else orjson.dumps(body)
    answer = send(live, method, path, *sent, body=raw)
    assert answer.status == status, (name, answer.status, answer.body[:200])
    check_error_shape(answer, [], head=False)
    error = orjson.loads(answer.body)["error"]
    assert code is None or error["code"] == code, error


def test_credentials_and_secrets_never_appear_in_logs(served: LiveGateway) -> None:
    """Used, refused, malformed, over-long, with control characters: no line the `serve`
    process logs holds the key, the token or a piece of the key's secret."""
    api_key = served.credentials.keys["premium"].encode()
    token = served.credentials.tokens["free"].encode()
    for credential in (api_key, token):
        auth = b"Bearer " + credential
        for value in (auth, auth + b"x", auth + b"\x01", auth + b"\x7f", auth + b"y" * 9000):
            for target in ("/v1/chat/completions", "/admin/usage"):
                data = request("POST", target, [JSON, (b"Authorization", value)], b"{}")
                served.run(send_raw(served.port, data, seconds=30, end_after=1))
    served.run(still_serving(served))
    check_no_leak(served.lines.since(0), served.credentials.secrets())


def test_every_request_that_entered_the_chain_leaves_one_usage_row_even_after_a_bad_one(
    live: LiveGateway,
) -> None:
    """A row that cannot be written (a token subject no text column takes) must not stop
    the rows after it."""
    bad = (b"Authorization", b"Bearer " + make_jwt(sub="\ud800x").encode())
    ids = [f"promise-{i}" for i in range(6)]
    for i, request_id in enumerate(ids):
        auth = bad if i == 1 else key(live)
        send(
            live,
            "POST",
            "/v1/chat/completions",
            JSON,
            auth,
            (b"X-Request-ID", request_id.encode()),
            body=orjson.dumps(CHAT),
        )

    async def rows() -> list[str | None]:
        found: list[str | None] = []
        for _ in range(1500):  # bounded only so a dead writer fails instead of hanging
            found = [r for r in await asyncio.to_thread(live.usage_request_ids) if r in ids]
            if len(found) >= len(ids):
                break
            await asyncio.sleep(0.02)
        return found

    assert sorted(live.run(rows(), timeout=300)) == ids
