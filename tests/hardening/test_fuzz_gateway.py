"""Property-based attack on the live gateway, every policy on (F10).

Every answer is checked by `Attacker.send`: no 5xx of the gateway's own making; every
4xx/5xx is OpenAI-shaped JSON; nothing forged reaches the upstream; no length field above
the tier's cap (nor below 1) reaches it; every answer of the chain carries its request
ID; no log line of any logger holds a credential. The last tests check the whole run:
one usage row per request that entered the chain, and no credential in any log line.
The examples of this module add up to about 2,700 per run (3,000 with the protocol fuzz).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hardening import strategies as s
from tests.hardening.attack import Attacker, Attempt
from tests.hardening.checks import check_no_leak
from tests.hardening.credentials import FORGED, HOSTILE_VALID, VALID
from tests.hardening.live import ADMIN_TOKEN, LiveGateway
from tests.hardening.wire import Header
from tests.support.gateways import CHAT

JSON: Header = (b"Content-Type", b"application/json")
paths = st.sampled_from(list(s.ENDPOINTS))
valid = st.sampled_from(list(VALID))


def minimal(path: str) -> dict[str, Any]:
    """The smallest valid body for one of the generating or embedding endpoints."""
    field = s.ENDPOINTS[path]
    return {"model": "fake", field: CHAT["messages"] if field == "messages" else "hi"}


def post(attacker: Attacker, path: str, body: bytes, caller: str, *extra: Header) -> Any:
    make, cap = VALID[caller] if caller in VALID else HOSTILE_VALID[caller]
    header = make(attacker.live.credentials)
    # One Content-Type only: aiohttp's parser refuses a repeated one (the protocol fuzz's case).
    typed = [JSON] if not any(name == b"Content-Type" for name, _ in extra) else []
    return attacker.send(Attempt("POST", path, [header, *typed, *extra], body, cap=cap))


@settings(max_examples=600)
@given(data=st.data(), path=paths, caller=valid, raw=st.booleans())
def test_hostile_bodies_get_a_clean_answer(
    attacker: Attacker, data: st.DataObject, path: str, caller: str, raw: bool
) -> None:
    body = data.draw(s.bodies(path), label="body")
    post(attacker, path, s.encode(body, raw_surrogates=raw), caller)


@settings(max_examples=500)
@given(
    path=st.sampled_from(
        ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"]
    ),
    caller=valid,
    lengths=st.dictionaries(st.sampled_from(s.LENGTHS), s.lengths, max_size=4),
    stream=st.booleans(),
)
def test_no_length_beyond_the_tier_cap_reaches_the_upstream(
    attacker: Attacker, path: str, caller: str, lengths: dict[str, Any], stream: bool
) -> None:
    body = {**minimal(path), **lengths, "stream": stream}
    answer = post(attacker, path, s.encode(body), caller)
    if answer.status == 400 and b"not valid JSON" not in answer.body:  # a string drawn bad
        error = orjson.loads(answer.body)["error"]
        # Anthropic's errors have no `param`: the message names the field.
        named = error.get("param") or error["message"].partition("'")[2].partition("'")[0]
        assert named in s.LENGTHS, f"a 400 that names no length field: {answer.body!r}"


@settings(max_examples=200)
@given(data=st.data(), path=paths, caller=valid)
def test_deeply_nested_bodies_get_a_clean_answer(
    attacker: Attacker, data: st.DataObject, path: str, caller: str
) -> None:
    body = data.draw(s.nested_bodies(path), label="body")
    post(attacker, path, s.encode(body), caller)


@settings(max_examples=300)
@given(
    path=paths,
    caller=valid,
    body=st.one_of(
        st.binary(max_size=200), st.sampled_from([b"", b"null", b"[]", b"{", b"\xef\xbb\xbf{}"])
    ),
    encoding=st.none() | s.content_encodings,
    content_type=s.content_types,
)
def test_bodies_that_are_not_json_get_a_clean_400(
    attacker: Attacker,
    path: str,
    caller: str,
    body: bytes,
    encoding: bytes | None,
    content_type: bytes,
) -> None:
    extra = [(b"Content-Type", content_type)]
    if encoding is not None:
        extra.append((b"Content-Encoding", encoding))
    answer = post(attacker, path, body, caller, *extra)
    assert answer.status in (400, 415), f"{answer.status} for a body that is not JSON"


@settings(max_examples=200)
@given(path=paths, caller=valid, encoding=s.content_encodings)
def test_a_json_body_declared_compressed_gets_a_clean_answer(
    attacker: Attacker, path: str, caller: str, encoding: bytes
) -> None:
    post(attacker, path, s.encode(minimal(path)), caller, (b"Content-Encoding", encoding))


@settings(max_examples=400)
@given(
    name=st.sampled_from([b"Authorization", b"api-key"]),
    scheme=st.sampled_from([b"Bearer ", b"bearer ", b"", b"Basic ", b"Bearer  "]),
    value=s.header_bytes,
    canary=st.integers(0, 2**48),
    request_id=st.none() | s.request_ids,
    traceparent=st.none() | s.traceparents,
    content_type=s.content_types,
)
def test_hostile_headers_get_a_clean_answer_and_stay_out_of_the_logs(
    attacker: Attacker,
    name: bytes,
    scheme: bytes,
    value: bytes,
    canary: int,
    request_id: bytes | None,
    traceparent: bytes | None,
    content_type: bytes,
) -> None:
    # A marker of our own inside the credential: it must not appear in any log line.
    marker = f"CANARY{canary:012x}"
    headers = [(name, scheme + marker.encode() + value), (b"Content-Type", content_type)]
    if request_id is not None:
        headers.append((b"X-Request-ID", request_id))
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    attempt = Attempt(
        "POST", "/v1/chat/completions", headers, orjson.dumps(CHAT), forged=True, secrets=(marker,)
    )
    assert attacker.send(attempt).status in (400, 401)


@settings(max_examples=400)
@given(
    forged=st.sampled_from(list(FORGED)),
    path=st.sampled_from([*s.ENDPOINTS, "/v1/models"]),
)
def test_forged_credentials_get_401_and_reach_nothing(
    attacker: Attacker, forged: str, path: str
) -> None:
    header = FORGED[forged](attacker.live.credentials)
    method = "GET" if path == "/v1/models" else "POST"
    body = None if method == "GET" else orjson.dumps(minimal(path))
    token = header[1].partition(b" ")[2].decode("utf-8", "surrogatepass")
    secrets = (token,) if len(token) >= 12 else ()
    answer = attacker.send(
        Attempt(method, path, [header, JSON], body, forged=True, secrets=secrets)
    )
    assert answer.status in (401, 403), f"{forged}: {answer.status}"


@settings(max_examples=150)
@given(
    caller=st.sampled_from([*VALID, *HOSTILE_VALID]),
    path=st.sampled_from([*s.ENDPOINTS, "/v1/models"]),
)
def test_valid_and_oddly_claimed_credentials_get_a_clean_answer(
    attacker: Attacker, caller: str, path: str
) -> None:
    if path == "/v1/models":
        make, cap = {**VALID, **HOSTILE_VALID}[caller]
        answer = attacker.send(Attempt("GET", path, [make(attacker.live.credentials)], cap=cap))
    else:
        answer = post(attacker, path, s.encode(minimal(path)), caller)
    if caller in VALID:
        assert answer.status == 200, f"{caller} on {path}: {answer.status} {answer.body[:200]!r}"


ROUTES = [
    *s.ENDPOINTS, "/v1/models", "/health", "/ready", "/metrics", "/admin/usage",
    "/", "/v1", "/v1/responses/resp_x", "/v1/responses/x/cancel", "/v1/messages/x",
    "/v1/chat/completions/x", "/admin/usage/x",
]  # fmt: skip
query_values = st.one_of(
    st.sampled_from(
        ["24h", "99999999999w", "1e309h", "-1h", "0s", "2026-13-45", "", "%ff", "1" * 400]
    ),
    st.text(max_size=12),
)


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    names = st.sampled_from(["since", "until", "by", "x"])
    pairs = draw(st.dictionaries(names, query_values, max_size=3))
    # Percent-encoded: raw control bytes in a URL are the protocol fuzz's case.
    return "&".join(f"{k}={quote(v, errors='surrogatepass')}" for k, v in pairs.items()).encode()


@settings(max_examples=400)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    path=st.sampled_from(ROUTES),
    query=st.none() | queries(),
    auth=st.sampled_from([b"admin", b"key", b"none", b"wrong", b"\xff\xfe"]),
    with_body=st.booleans(),
)
def test_every_route_and_method_gets_a_clean_answer(
    attacker: Attacker, method: str, path: str, query: bytes | None, auth: bytes, with_body: bool
) -> None:
    credentials = attacker.live.credentials
    tokens = {b"admin": ADMIN_TOKEN.encode(), b"key": credentials.keys["free"].encode()}
    headers = [] if auth == b"none" else [(b"Authorization", b"Bearer " + tokens.get(auth, auth))]
    target = path.encode() + (b"?" + query if query is not None else b"")
    body = orjson.dumps(CHAT) if with_body else None
    attacker.send(Attempt(method, path, [*headers, JSON], body, target=target, cap=16))


def test_every_request_that_entered_the_chain_left_one_usage_row(
    attacker: Attacker, live: LiveGateway
) -> None:
    """Runs after the fuzz of this module (pytest keeps file order); alone it still has
    its own requests to count."""
    for caller in VALID:
        post(attacker, "/v1/chat/completions", orjson.dumps(CHAT), caller)
    expected = attacker.expected_ids

    async def written() -> Counter[str | None]:
        rows: Counter[str | None] = Counter()
        for _ in range(1500):  # bounded only so a dead writer fails instead of hanging
            rows = Counter(await asyncio.to_thread(live.usage_request_ids))
            if all(rows[i] >= n for i, n in expected.items()):
                break
            await asyncio.sleep(0.02)
        return rows

    rows = live.run(written(), timeout=300)
    missing = {i: n - rows[i] for i, n in expected.items() if rows[i] < n}
    assert not missing, f"{sum(missing.values())} usage rows missing, e.g. {list(missing)[:5]}"
    extra = sum((rows - Counter(expected)).values())
    assert extra <= attacker.unknown, f"{extra} usage rows for requests never sent"


def test_no_log_line_of_the_whole_run_holds_a_credential(
    attacker: Attacker, live: LiveGateway
) -> None:
    lines = live.lines.since(0)
    assert lines, "the run wrote no log line at all: the capture is broken"
    check_no_leak(lines, attacker.secrets)
