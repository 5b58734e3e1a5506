"""POST /v1/responses (OpenAI's Responses API) through the gateway, plain and streamed:
relayed as llama-server wrote it, its usage read, a stream cut off ended in its shape."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import sse
from gateway.context import OK, UPSTREAM_ERROR
from tests.support.apis import RESPONSE, RESPONSES_USAGE, seen_gateway, timeless
from tests.support.fake_apis import ResponsesShape
from tests.support.fake_llama import FakeLlama


async def test_plain_answer_is_relayed_and_its_usage_read(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    resp = await client.post("/v1/responses", json=RESPONSE)
    assert resp.status == 200
    expected = ResponsesShape(1, {}).completion(RESPONSE, 3)
    assert timeless(await resp.read()) == timeless(orjson.dumps(expected))
    ctx = await seen.last(client)
    assert (ctx.outcome, ctx.usage) == (OK, RESPONSES_USAGE)


async def test_stream_is_relayed_untouched_with_its_event_lines(
    aiohttp_client: Any, fake_url: str, fake: FakeLlama
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    resp = await client.post("/v1/responses", json={**RESPONSE, "stream": True})
    assert resp.headers["Content-Type"] == "text/event-stream"
    sent = b"".join(ResponsesShape(1, {}).events(3, "tok{i} ", "fake"))
    assert timeless(await resp.read()) == timeless(sent)
    # The API's stream always ends with its usage: nothing is asked for on its behalf.
    assert "stream_options" not in fake.requests[-1]
    ctx = await seen.last(client)
    assert (ctx.outcome, ctx.delivered, ctx.usage) == (OK, True, RESPONSES_USAGE)


async def test_stream_cut_off_ends_with_the_apis_error_event(
    aiohttp_client: Any, fake_url: str
) -> None:
    client, seen = await seen_gateway(aiohttp_client, fake_url)
    body = {**RESPONSE, "stream": True, "fake": {"drop_after": 5}}
    resp = await client.post("/v1/responses", json=body)
    events = sse.events(await resp.read())
    assert len(events) == 6
    assert events[-1].startswith(b"event: error\ndata: ")
    error = sse.event_json(events[-1])
    assert error is not None
    assert (error["type"], error["code"], error["sequence_number"]) == (
        "error",
        "upstream_error",
        5,
    )
    assert error["error"]["message"] == error["message"]
    assert "broke off" in error["message"]
    ctx = await seen.last(client)
    assert (ctx.outcome, ctx.delivered) == (UPSTREAM_ERROR, False)


async def sdk(client: TestClient[Any, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)


async def test_sdk_reads_a_plain_answer(gateway: TestClient[Any, Any]) -> None:
    async with await sdk(gateway) as client:
        answer = await client.responses.create(model="fake", input="hello", max_output_tokens=8)
    assert answer.output_text == "tok0 tok1 tok2"
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (5, 3)


async def test_sdk_reads_a_stream(gateway: TestClient[Any, Any]) -> None:
    async with await sdk(gateway) as client:
        stream = await client.responses.create(model="fake", input="hello", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 "
    assert events[-1].response.usage.output_tokens == 3  # type: ignore[union-attr]


async def test_sdk_raises_on_a_stream_cut_off(gateway: TestClient[Any, Any]) -> None:
    async with await sdk(gateway) as client:
        stream = await client.responses.create(
            model="fake", input="hello", stream=True, extra_body={"fake": {"drop_after": 6}}
        )
        with pytest.raises(openai.APIError, match="broke off"):
            async for _ in stream:
                pass


async def test_upstream_error_reaches_the_sdk_with_its_status(
    gateway: TestClient[Any, Any],
) -> None:
    async with await sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError, match="fake failure"):
            await client.responses.create(
                model="fake", input="hello", extra_body={"fake": {"status": 400}}
            )


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_stored_response_is_an_openai_shaped_not_found(
    gateway: TestClient[Any, Any], fake: FakeLlama, method: str
) -> None:
    resp = await gateway.request(method, "/v1/responses/resp_abc")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Response with id 'resp_abc' not found: this gateway")
    assert fake.requests == []


async def test_sdk_retrieve_delete_and_cancel_raise_not_found(
    gateway: TestClient[Any, Any],
) -> None:
    async with await sdk(gateway) as client:
        for call in (client.responses.retrieve, client.responses.delete, client.responses.cancel):
            with pytest.raises(openai.NotFoundError, match="stores no responses"):
                await call("resp_abc")
