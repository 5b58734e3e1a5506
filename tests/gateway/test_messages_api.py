"""POST /v1/messages (Anthropic's Messages API) through the gateway, plain and streamed:
relayed as llama-server wrote it, its usage read from message_start and message_delta,
its headers passed on, every error in Anthropic's shape."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import sse
from gateway.context import OK, UPSTREAM_ERROR
from tests.support.apis import MESSAGE, MESSAGES_USAGE, seen_gateway, timeless
from tests.support.fake_apis import MessagesShape
from tests.support.fake_llama import FakeLlama


def anthropic_error(kind: str, message: Any = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def error_of(resp: Any) -> dict[str, Any]:
    """The answer with its message replaced by None, once it is known to be a string."""
    value: dict[str, Any] = await resp.json()
    assert isinstance(value["error"].pop("message"), str)
    value["error"]["message"] = None
    return value


async def test_plain_answer_is_relayed_and_its_usage_read(
    aiohttp_client: Any, fake_url: str
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    resp = await client.post("/v1/messages", json=MESSAGE)
    assert resp.status == 200
    expected = MessagesShape(1, {}).completion(MESSAGE, 3)
    assert timeless(await resp.read()) == timeless(orjson.dumps(expected))
    ctx = await seen.last(client)
    # The prompt counts the tokens read from llama-server's cache too.
    assert (ctx.outcome, ctx.usage) == (OK, MESSAGES_USAGE)


async def test_stream_is_relayed_untouched_and_its_usage_read(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    resp = await client.post("/v1/messages", json={**MESSAGE, "stream": True})
    sent = b"".join(MessagesShape(1, {}).events(3, "tok{i} ", "fake"))
    assert await resp.read() == sent
    assert "stream_options" not in fake.requests[-1]
    ctx = await seen.last(client)
    assert (ctx.outcome, ctx.delivered, ctx.usage) == (OK, True, MESSAGES_USAGE)


async def test_anthropic_headers_pass_upstream_and_credentials_never(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "tools-2024",
        "x-api-key": "sk-secret",
        "api-key": "sk-secret",
        "Authorization": "Bearer sk-secret",
    }
    resp = await gateway.post("/v1/messages", json=MESSAGE, headers=headers)
    assert resp.status == 200
    received = {k.lower(): v for k, v in fake.headers[-1].items()}
    assert (received["anthropic-version"], received["anthropic-beta"]) == (
        "2023-06-01",
        "tools-2024",
    )
    assert not {"x-api-key", "api-key", "authorization"} & received.keys()
    assert "sk-secret" not in repr(received)


async def test_anthropic_version_is_not_sent_on_other_routes(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    body = {"model": "fake", "messages": MESSAGE["messages"]}
    await gateway.post("/v1/chat/completions", json=body, headers={"anthropic-version": "1"})
    assert "anthropic-version" not in {k.lower() for k in fake.headers[-1]}


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{", 400, "invalid_request_error"),
        (b'{"model": "fake", "max_tokens": 4}', 400, "invalid_request_error"),
        (b'{"model": "fake", "messages": "hi"}', 400, "invalid_request_error"),
        (b'{"model": "fake", "messages": [], "max_tokens": 0}', 400, "invalid_request_error"),
        (b'{"model": "nope", "messages": []}', 404, "not_found_error"),
        (
            b'{"model": "fake", "messages": [], "fake": {"status": 400}}',
            400,
            "invalid_request_error",
        ),
        (b'{"model": "fake", "messages": [], "fake": {"status": 501}}', 501, "api_error"),
    ],
)
async def test_errors_are_in_anthropics_shape(
    gateway: TestClient[Any, Any], body: bytes, status: int, kind: str
) -> None:
    headers = {"Content-Type": "application/json"}
    resp = await gateway.post("/v1/messages", data=body, headers=headers)
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert await error_of(resp) == anthropic_error(kind)


async def test_upstreams_error_message_is_kept(gateway: TestClient[Any, Any]) -> None:
    body = {**MESSAGE, "fake": {"status": 400}}
    resp = await gateway.post("/v1/messages", json=body)
    assert await resp.json() == anthropic_error("invalid_request_error", "fake failure on request")


@pytest.mark.parametrize("path", ["/v1/messages/x", "/v1/messages"])
async def test_unknown_url_under_the_route_is_in_anthropics_shape(
    gateway: TestClient[Any, Any], path: str
) -> None:
    resp = await gateway.get(path)
    assert resp.status == 404
    assert await error_of(resp) == anthropic_error("not_found_error")


async def test_stream_cut_off_ends_with_an_anthropic_error_event(
    aiohttp_client: Any, fake_url: str
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    body = {**MESSAGE, "stream": True, "fake": {"drop_after": 3}}
    events = sse.events(await (await client.post("/v1/messages", json=body)).read())
    assert len(events) == 4
    assert events[-1].startswith(b"event: error\ndata: ")
    assert sse.event_json(events[-1]) == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": (sse.event_json(events[-1]) or {})["error"]["message"],
        },
    }
    ctx = await seen.last(client)
    assert (ctx.outcome, ctx.delivered) == (UPSTREAM_ERROR, False)


async def test_upstream_error_event_gets_its_event_line(gateway: TestClient[Any, Any]) -> None:
    body = {**MESSAGE, "stream": True, "fake": {"error_after": 3}}
    events = sse.events(await (await gateway.post("/v1/messages", json=body)).read())
    assert (
        events[-1]
        == b"event: error\ndata: "
        + orjson.dumps(anthropic_error("api_error", "fake failure mid-stream"))
        + b"\n\n"
    )


def sdk(client: TestClient[Any, Any], **auth: Any) -> anthropic.AsyncAnthropic:
    base = str(client.make_url("")).rstrip("/")
    return anthropic.AsyncAnthropic(base_url=base, max_retries=0, **({"api_key": "x"} | auth))


async def test_sdk_reads_a_plain_answer(gateway: TestClient[Any, Any]) -> None:
    async with sdk(gateway) as client:
        message = await client.messages.create(**MESSAGE)
    assert [block.text for block in message.content] == ["tok0 tok1 tok2"]  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 3)


async def test_sdk_reads_a_stream(gateway: TestClient[Any, Any]) -> None:
    async with sdk(gateway) as client, client.messages.stream(**MESSAGE) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "tok0 tok1 tok2 "
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 3)
    assert final.stop_reason == "end_turn"


async def test_sdk_raises_on_a_stream_cut_off(gateway: TestClient[Any, Any]) -> None:
    body = {**MESSAGE, "extra_body": {"fake": {"drop_after": 4}}}
    async with sdk(gateway) as client, client.messages.stream(**body) as stream:
        with pytest.raises(anthropic.APIStatusError, match="broke off"):
            await stream.get_final_message()


async def test_sdk_raises_bad_request_for_a_refused_body(gateway: TestClient[Any, Any]) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(anthropic.BadRequestError) as raised:
            await client.messages.create(model="fake", max_tokens=0, messages=MESSAGE["messages"])
    assert raised.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
