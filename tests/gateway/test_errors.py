"""Client-triggered failures are 400s; anything unexpected is one OpenAI-shaped, counted 500."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.app import STATE, create_app
from gateway.context import Reply, RequestContext
from gateway.errors import GatewayError
from gateway.policy import Chain, Policy, RouteHandler
from gateway.upstreams import HEALTHY
from policies.request_id import RequestIdPolicy, RequestIdSettings
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, ENV, gateway_config
from tests.support.metrics import scrape, value
from tests.support.replicas import access_lines, settle


def deep_body(depth: int, **fields: object) -> bytes:
    """A chat body whose message content nests `depth` lists (orjson writes no such body)."""
    content = b"[" * depth + b'"deep"' + b"]" * depth
    extra = b"".join(b"," + orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in fields.items())
    return b'{"model":"fake","messages":[{"role":"user","content":' + content + b"}]" + extra + b"}"


class Faulty(Policy):
    """Fails where it is told to, and records what its completion hook saw."""

    name = "faulty"

    def __init__(self, where: str = "", change_body: bool = False) -> None:
        super().__init__(None, ENV)
        self.where = where
        self.change_body = change_body
        self.completed: list[tuple[int, str]] = []

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        if self.where == "request":
            raise RuntimeError("policy bug")
        if self.where == "surrogate":
            ctx.principal = "jwt:\ud800x"
        if self.change_body:
            body = await ctx.json()
            body["max_tokens"] = 16
            ctx.body_changed = True
        return None

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        if self.where == "response":
            raise KeyError("policy bug")

    async def on_event(self, ctx: RequestContext, event: bytes) -> bytes | None:
        if self.where == "event" and b"tok1" in event:
            raise ValueError("policy bug")
        return event

    async def on_complete(self, ctx: RequestContext) -> None:
        self.completed.append((ctx.status, ctx.outcome))

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("admin bug")

        async def fine(request: web.Request) -> web.Response:
            return web.json_response({"fine": True})

        return {("GET", "/admin/broken"): broken, ("GET", "/admin/fine"): fine}


async def gateway_with(aiohttp_client: Any, fake_url: str, policy: Faulty) -> TestClient[Any, Any]:
    chain = Chain([RequestIdPolicy(RequestIdSettings(), ENV), policy])
    client: TestClient[Any, Any] = await aiohttp_client(create_app(gateway_config(fake_url), chain))
    return client


def assert_internal_error(resp_status: int, body: dict[str, Any], request_id: str) -> None:
    assert resp_status == 500
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert error["code"] == "internal_error"
    assert request_id
    assert f"request ID {request_id}" in error["message"]


async def assert_refused(client: TestClient[Any, Any], err: str, model: str) -> dict[str, Any]:
    """A 400 in OpenAI's shape, seen as such by the access log and the metrics."""
    (line,) = access_lines(err)
    assert (line["status"], line["outcome"]) == (400, "rejected")
    samples = await scrape(client)
    labels = {"model": model, "endpoint": "chat.completions", "tier": "none"}
    assert value(samples, "llama_gateway_requests_total", status="4xx", **labels) == 1
    return line


async def test_deep_nesting_in_a_stream_is_refused_with_400(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty())
    resp = await client.post("/v1/chat/completions", data=deep_body(300, stream=True))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "too_deeply_nested")
    assert "254 levels" in error["message"]
    assert fake.requests == []
    await settle(client)
    line = await assert_refused(client, capsys.readouterr().err, "fake")
    assert line["request_id"] == resp.headers["X-Request-ID"]


async def test_deep_nesting_in_a_body_a_policy_changed_is_refused_with_400(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty(change_body=True))
    resp = await client.post("/v1/chat/completions", data=deep_body(300))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "too_deeply_nested"
    assert fake.requests == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_compressed_as_declared_is_refused_with_400(
    aiohttp_client: Any,
    fake_url: str,
    fake: FakeLlama,
    encoding: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty())
    resp = await client.post(
        "/v1/chat/completions", data=orjson.dumps(CHAT), headers={"Content-Encoding": encoding}
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_content_encoding"
    assert error["type"] == "invalid_request_error"
    assert f"'{encoding}'" in error["message"]
    assert fake.requests == []
    await settle(client)
    assert resp.headers["Connection"] == "close"  # the parser cannot go on after a broken body
    await assert_refused(client, capsys.readouterr().err, "none")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
async def test_a_compressed_body_is_forwarded_decoded(
    gateway: TestClient[Any, Any], fake: FakeLlama, encoding: str, compress: Any
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions",
        data=compress(orjson.dumps(CHAT)),
        headers={"Content-Encoding": encoding},
    )
    assert resp.status == 200
    assert fake.requests[-1]["messages"] == CHAT["messages"]


async def test_the_access_log_survives_a_lone_surrogate(
    aiohttp_client: Any, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty("surrogate"))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    await settle(client)
    (line,) = access_lines(capsys.readouterr().err)
    assert line["status"] == 200
    assert line["principal"] == "jwt:\\ud800x"


async def test_an_unexpected_exception_is_an_openai_shaped_500_with_the_request_id(
    aiohttp_client: Any,
    fake_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    faulty = Faulty("request")
    client = await gateway_with(aiohttp_client, fake_url, faulty)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    request_id = resp.headers["X-Request-ID"]
    assert_internal_error(resp.status, await resp.json(), request_id)
    await settle(client)
    (line,) = access_lines(capsys.readouterr().err)
    assert (line["status"], line["outcome"]) == (500, "internal_error")
    assert line["request_id"] == request_id
    assert faulty.completed == [(500, "internal_error")]
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert tracebacks[0].name == "gateway.relay"
    samples = await scrape(client)
    labels = {"model": "none", "endpoint": "chat.completions", "tier": "none"}
    assert value(samples, "llama_gateway_requests_total", status="5xx", **labels) == 1
    assert value(samples, "llama_gateway_internal_errors_total", route="/v1/chat/completions") == 1


async def test_a_failing_response_hook_still_gets_a_500(
    aiohttp_client: Any, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    faulty = Faulty("response")
    client = await gateway_with(aiohttp_client, fake_url, faulty)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    body = await resp.json()
    assert resp.status == 500
    assert body["error"]["code"] == "internal_error"
    await settle(client)
    (line,) = access_lines(capsys.readouterr().err)
    assert (line["status"], line["outcome"]) == (500, "internal_error")
    assert faulty.completed == [(500, "internal_error")]


async def test_a_failing_response_hook_on_a_refusal_still_gets_a_500(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty("response"))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert resp.status == 500
    assert resp.headers["Content-Type"] == "application/json"
    assert (await resp.json())["error"]["code"] == "internal_error"
    assert fake.requests == []


async def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(
    aiohttp_client: Any, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    faulty = Faulty("event")
    client = await gateway_with(aiohttp_client, fake_url, faulty)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200  # the head was sent before the failure
    last = (await resp.read()).strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ")
    assert orjson.loads(last[6:])["error"]["code"] == "internal_error"
    await settle(client)
    (line,) = access_lines(capsys.readouterr().err)
    assert (line["status"], line["outcome"]) == (500, "internal_error")
    assert faulty.completed == [(500, "internal_error")]


async def test_a_failing_policy_route_is_an_openai_shaped_500(
    aiohttp_client: Any, fake_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty())
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/admin/broken")
        assert_internal_error(resp.status, await resp.json(), resp.headers["X-Request-ID"])
    (record,) = [r for r in caplog.records if r.exc_info]
    assert getattr(record, "request_id") == resp.headers["X-Request-ID"]  # noqa: B009
    samples = await scrape(client)
    assert value(samples, "llama_gateway_internal_errors_total", route="/admin/broken") == 1


@pytest.mark.parametrize("path", ["/v1/models", "/health", "/ready", "/metrics", "/admin/fine"])
async def test_head_answers_like_get_without_a_body(
    aiohttp_client: Any, fake_url: str, path: str
) -> None:
    client = await gateway_with(aiohttp_client, fake_url, Faulty())
    for upstream in client.app[STATE].pool.upstreams:  # no wait for the first health probe
        upstream.mark(HEALTHY, "test")
    got = await client.get(path)
    await got.read()
    head = await client.head(path)
    assert head.status == got.status
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert await head.read() == b""


def test_an_error_answers_with_its_status_body_and_headers_then_the_given_ones() -> None:
    err = GatewayError(429, "slow down", code="rate_limited", headers={"Retry-After": "3"})
    response = err.response({"X-Request-ID": "r1"})
    assert response.status == 429
    assert response.body == err.body()
    assert list(response.headers.items()) == [
        ("Retry-After", "3"),
        ("X-Request-ID", "r1"),
        ("Content-Type", "application/json"),
    ]
