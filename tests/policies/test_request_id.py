"""Request IDs: accepted when sane, made otherwise, echoed, sent upstream and logged."""

from __future__ import annotations

import io
import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE
from gateway.logs import JsonFormatter
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory


async def test_sane_client_id_is_echoed_and_sent_upstream(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "client-42.a:b"}
    )
    assert resp.headers["X-Request-ID"] == "client-42.a:b"
    assert fake.headers[-1]["X-Request-ID"] == "client-42.a:b"


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "new\\nline", 'quote"d', "<script>", "é"])
async def test_insane_client_id_is_replaced(
    gateway: TestClient[Any, Any], fake: FakeLlama, bad: str
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": bad.encode().decode("latin-1")}
    )
    made = resp.headers["X-Request-ID"]
    assert made != bad
    assert len(made) == 32
    assert fake.headers[-1]["X-Request-ID"] == made


@pytest.mark.parametrize(
    "credential",
    [
        "sk-gw_3cd1221f5cd3_1AxtIV-h9ITCbSKVNzlgpo9x7hMku9dVKnVbJN5tZEU",
        "eyJhbGciOiJIUzI1NiJ9.e30.sig",
    ],
)
async def test_a_credential_sent_as_the_id_is_replaced(
    gateway: TestClient[Any, Any], fake: FakeLlama, credential: str
) -> None:
    # The ID goes into every log line (the access line unredacted), every usage row and
    # the upstream's own logs: a key pasted there by mistake must reach none of them.
    resp = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": credential}
    )
    made = resp.headers["X-Request-ID"]
    assert len(made) == 32
    assert fake.headers[-1]["X-Request-ID"] == made


async def test_each_request_gets_its_own_id(gateway: TestClient[Any, Any]) -> None:
    ids = {
        (await gateway.post("/v1/chat/completions", json=CHAT)).headers["X-Request-ID"]
        for _ in range(5)
    }
    assert len(ids) == 5


async def test_error_answers_carry_the_id_too(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", data=b"nope", headers={"X-Request-ID": "abc"})
    assert resp.status == 400
    assert resp.headers["X-Request-ID"] == "abc"
    stream = await gateway.post(
        "/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Request-ID": "s1"}
    )
    assert stream.headers["X-Request-ID"] == "s1"


async def test_untrusted_client_ids_are_ignored(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(policies=[{"type": "request_id", "trust_client": False}])
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "mine"})
    assert resp.headers["X-Request-ID"] != "mine"


async def test_every_log_line_of_a_request_carries_its_id(gateway: TestClient[Any, Any]) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    relay = gateway.app[STATE].relay
    assert relay is not None
    assert relay.access_log is not None
    access: list[bytes] = []
    relay.access_log._write = access.append
    try:
        body = {**CHAT, "stream": True, "fake": {"drop_after": 1}}
        await gateway.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "trace-me"})
        await relay.drain()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    lines += [orjson.loads(line) for line in b"".join(access).splitlines()]
    loggers = ("gateway.streaming", "gateway.access")
    request_lines = [line for line in lines if line["logger"] in loggers]
    assert [line["logger"] for line in request_lines] == list(loggers)
    assert all(line["request_id"] == "trace-me" for line in request_lines)
    assert request_lines[1]["outcome"] == "upstream_error"
