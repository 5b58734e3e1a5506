"""Streaming through the gateway: event by event, usage, failures and hang-ups."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway import sse
from gateway.app import STATE, create_app
from gateway.context import DISCONNECTED, OK, RequestContext
from gateway.policy import Chain, Policy, PolicyEnv
from gateway.resources import Resources
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import GatewayFactory, gateway_config

STREAM = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def read_events(resp: Any) -> list[bytes]:
    return sse.events(await resp.read())


async def test_stream_is_relayed_and_ends_with_done(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**STREAM, "fake": {"chunks": 5}})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = await read_events(resp)
    assert events[-1] == sse.DONE
    texts = [sse.event_json(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]  # type: ignore[index]
    assert texts == [f"tok{i} " for i in range(5)]


async def test_usage_is_forced_upstream_but_hidden_from_the_client(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post("/v1/chat/completions", json=STREAM)
    events = await read_events(resp)
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    assert not any(b'"usage"' in e for e in events)


async def test_usage_event_reaches_a_client_that_asked_for_it(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    body = {**STREAM, "stream_options": {"include_usage": True}}
    resp = await gateway.post("/v1/chat/completions", json=body)
    events = await read_events(resp)
    usage_events = [sse.event_json(e) for e in events if b'"usage"' in e]
    assert usage_events == [
        {
            **usage_events[0],
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 3,
                "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    ]
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}


async def test_stream_with_usage_in_final_chunk_is_passed_unchanged(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json={**STREAM, "fake": {"usage": "in_final"}}
    )
    events = await read_events(resp)
    final = sse.event_json(events[-2])
    assert final is not None
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 3


async def test_events_arrive_one_by_one_before_the_stream_ends(
    gateway: TestClient[Any, Any],
) -> None:
    body = {**STREAM, "fake": {"chunks": 3, "delay": 0.3}}
    resp = await gateway.post("/v1/chat/completions", json=body)
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
    assert b'"role":"assistant"' in first
    second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
    assert b"tok0" in second
    assert not resp.content.at_eof()
    await resp.read()


async def test_many_chunks_are_all_relayed_in_order(gateway: TestClient[Any, Any]) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**STREAM, "fake": {"chunks": 2000}})
    events = await read_events(resp)
    contents = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == [f"tok{i} " for i in range(2000)]


async def test_upstream_dropping_mid_stream_ends_with_an_error_event(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json={**STREAM, "fake": {"chunks": 5, "drop_after": 3}}
    )
    events = await asyncio.wait_for(read_events(resp), 5)
    last = sse.event_json(events[-1])
    assert last is not None
    assert last["error"]["type"] == "server_error"
    assert "broke off" in last["error"]["message"]
    assert sse.DONE not in events


async def test_upstream_going_silent_mid_stream_hits_the_idle_timeout(
    make_gateway: GatewayFactory,
) -> None:
    client = await make_gateway(upstream={"idle_timeout": 0.3})
    resp = await client.post("/v1/chat/completions", json={**STREAM, "fake": {"hang_after": 2}})
    events = await asyncio.wait_for(read_events(resp), 5)
    last = sse.event_json(events[-1])
    assert last is not None
    assert "timed out" in last["error"]["message"]


async def test_upstream_error_event_mid_stream_is_passed_through(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**STREAM, "fake": {"error_after": 2}})
    events = await read_events(resp)
    assert sse.event_json(events[-1]) == {
        "error": {"code": 500, "message": "fake failure mid-stream", "type": "server_error"}
    }


async def test_client_hang_up_cancels_the_upstream_request(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    body = {**STREAM, "fake": {"chunks": 1000, "delay": 0.05}}
    resp = await gateway.post("/v1/chat/completions", json=body)
    await resp.content.readuntil(b"\n\n")
    assert fake.in_flight == 1
    resp.close()
    for _ in range(100):
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1
    assert fake.in_flight == 0
    assert fake.completed == 0


async def test_client_hang_up_before_first_byte_cancels_the_upstream_request(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    body = {**STREAM, "fake": {"first_byte_delay": 30}}
    request = asyncio.create_task(gateway.post("/v1/chat/completions", json=body))
    for _ in range(100):
        if fake.in_flight:
            break
        await asyncio.sleep(0.02)
    assert fake.in_flight == 1
    request.cancel()
    for _ in range(100):
        if fake.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake.cancelled == 1
    assert fake.in_flight == 0


class Outcomes(Policy):
    """Records how each request ended, as completion policies see it."""

    name = "outcomes"

    def __init__(self) -> None:
        super().__init__(None, PolicyEnv(gateway_config("http://127.0.0.1:9"), {}, Resources()))
        self.seen: list[str] = []

    async def on_complete(self, ctx: RequestContext) -> None:
        self.seen.append(ctx.outcome)

    async def settled(self, client: Any) -> None:
        """Wait for the request's completion (a task of its own) to have run."""
        relay = client.app[STATE].relay
        for _ in range(200):
            if self.seen:
                break
            await asyncio.sleep(0.01)
        await relay.drain()


async def test_client_closing_right_after_done_is_not_a_disconnect(
    aiohttp_client: Any, fake_url: str
) -> None:
    recorder = Outcomes()
    app = create_app(gateway_config(fake_url), Chain([recorder]))
    # As in production: a client's hang-up cancels the handler at once.
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    body = {**STREAM, "fake": {"chunks": 2, "linger_after_done": 1.0}}
    resp = await client.post("/v1/chat/completions", json=body)
    data = b""
    while not data.endswith(sse.DONE):
        data += await resp.content.readany()
    resp.close()  # as the OpenAI SDK does once it has read `[DONE]`
    await recorder.settled(client)
    assert recorder.seen == [OK]


async def test_events_sent_counts_events_not_data_prefixes_in_the_text(
    aiohttp_client: Any, fake_url: str
) -> None:
    class Counts(Outcomes):
        async def on_complete(self, ctx: RequestContext) -> None:
            self.seen.append(str(ctx.events_sent))

    recorder = Counts()
    client = await aiohttp_client(create_app(gateway_config(fake_url), Chain([recorder])))
    body = {**STREAM, "fake": {"chunks": 4, "text": "data: {i}\\n\\ndata:"}}
    resp = await client.post("/v1/chat/completions", json=body)
    await resp.read()
    await recorder.settled(client)
    # The role event, 4 content events, the finishing event and [DONE].
    assert recorder.seen == ["7"]


class HangsUpBeforeTheHead(Outcomes):
    """The client's connection closes just as the response head is about to be sent."""

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        assert ctx.request.transport is not None
        ctx.request.transport.close()


async def test_client_gone_just_before_the_stream_starts_is_a_disconnect(
    aiohttp_client: Any, fake_url: str
) -> None:
    recorder = HangsUpBeforeTheHead()
    client = await aiohttp_client(create_app(gateway_config(fake_url), Chain([recorder])))
    with contextlib.suppress(aiohttp.ClientError):
        await client.post("/v1/chat/completions", json=STREAM)
    await recorder.settled(client)
    assert recorder.seen == [DISCONNECTED]
