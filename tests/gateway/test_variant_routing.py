"""A running gateway serves an experiment's name by each caller's variant, says which in
`X-Model-Variant`, the access log and the metrics, and lets only a tier that may choose
pick one; hostile header values are refused with a clear 400, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from tests.support.apis import MESSAGE, RESPONSE
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import gateway_config
from tests.support.metrics import scrape, value
from tests.support.raw_http import exchange
from tests.support.replicas import access_lines, settle, start_fakes
from tests.support.variants import AUTH, FREE, TESTER, TIERS, VARIANTS, ask, assigned, chat, models

Gateway = tuple[TestClient[Any, Any], list[FakeLlama]]


@pytest.fixture
async def gateway(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Gateway:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    config = gateway_config(
        urls[0],
        models=models(urls),
        storage={"data_dir": str(tmp_path)},
        tiers=TIERS,
        policies=[AUTH],
        variants=VARIANTS,
    )
    return await aiohttp_client(create_app(config)), fakes


def served(fakes: list[FakeLlama]) -> list[int]:
    return [len(fake.requests) for fake in fakes]


async def test_each_caller_is_served_by_its_variant_every_time(gateway: Gateway) -> None:
    client, fakes = gateway
    expected = {"m": 0, "m-q8": 0}
    for i in range(24):
        address = f"10.0.0.{i}"
        variant = assigned(f"ip:{address}")
        expected[variant] += 2
        for _ in range(2):
            resp = await ask(client, address=address)
            assert resp.status == 200
            assert resp.headers["X-Model-Variant"] == variant
            # The answer's `model` is the upstream's own (the fake echoes what it was sent).
            assert (await resp.json())["model"] == "chat"
    assert served(fakes) == [expected["m"], expected["m-q8"]]
    assert 0 < expected["m"] < 48  # both variants served


async def test_a_stream_says_its_variant(gateway: Gateway) -> None:
    client, _ = gateway
    resp = await ask(client, chat(stream=True), key=FREE)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["X-Model-Variant"] == assigned("static:f")
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")


async def test_an_error_after_routing_says_its_variant(gateway: Gateway) -> None:
    client, _ = gateway
    failed = await ask(client, chat(fake={"status": 400}), key=FREE)
    assert (failed.status, failed.headers["X-Model-Variant"]) == (400, assigned("static:f"))
    unreachable = await ask(client, chat("broken"), key=FREE)
    assert unreachable.status >= 500
    assert unreachable.headers["X-Model-Variant"] == "m-dead"
    # Refused at connect, or known down by then: either way after the variant was chosen.
    codes = ("upstream_error", "upstream_unavailable")
    assert (await unreachable.json())["error"]["code"] in codes


async def test_a_tier_that_may_choose_picks_its_variant(gateway: Gateway) -> None:
    client, fakes = gateway
    for variant, counts in (("m-q8", [0, 1]), ("m", [1, 1]), ("m-q8", [1, 2])):
        resp = await ask(client, key=TESTER, variant=variant)
        assert (resp.status, resp.headers["X-Model-Variant"]) == (200, variant)
        assert served(fakes) == counts


async def test_a_tier_without_the_permission_cannot_pick(gateway: Gateway) -> None:
    client, fakes = gateway
    for caller in ({"key": FREE}, {"address": "10.0.0.1"}):
        resp = await ask(client, variant="m-q8", **caller)
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "permission_denied"
        assert "may not choose a variant of 'chat' with X-Model-Variant" in error["message"]
        assert "X-Model-Variant" not in resp.headers
    assert served(fakes) == [0, 0]


@pytest.mark.parametrize(
    "wanted",
    ["", "nope", " ", "M-Q8", "m-q8,m", "fake", "m-dead", "chat", "*", "../m", "m" * 4000, "é"],
)
async def test_a_variant_the_experiment_lacks_is_a_clear_400(gateway: Gateway, wanted: str) -> None:
    client, fakes = gateway
    resp = await ask(client, key=TESTER, variant=wanted)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_variant"
    assert "is not a variant of 'chat'; use one of ['m', 'm-q8']" in error["message"]
    assert len(error["message"]) < 300  # the value is quoted cut short
    assert served(fakes) == [0, 0]


async def test_header_bytes_no_client_would_send_are_a_clear_400(gateway: Gateway) -> None:
    client, _ = gateway
    body = orjson.dumps(chat())
    for raw_value in (b"\xff\xfe", b"m-q8\x01", b"\xc3\xa9"):
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + TESTER.encode() + b"\r\n"
            b"Content-Type: application/json\r\nX-Model-Variant: " + raw_value + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert client.server.port is not None
        status, _, answer = await exchange(client.server.port, request)
        assert status == 400, answer


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {**MESSAGE, "model": "chat"}),
        ("/v1/responses", {**RESPONSE, "model": "chat"}),
        ("/v1/messages", {**MESSAGE, "model": "chat", "stream": True}),
    ],
)
async def test_the_other_apis_route_an_experiment_alike(
    gateway: Gateway, path: str, body: dict[str, Any]
) -> None:
    client, _ = gateway
    headers = {"Authorization": f"Bearer {FREE}"}
    resp = await client.post(path, json=body, headers=headers)
    assert (resp.status, resp.headers["X-Model-Variant"]) == (200, assigned("static:f"))
    await resp.read()
    refused = await client.post(path, json=body, headers={**headers, "X-Model-Variant": "m"})
    assert refused.status == 403
    if path == "/v1/messages":  # in that API's own error shape
        assert (await refused.json())["error"]["type"] == "permission_error"


async def test_the_header_means_nothing_for_a_model_without_variants(gateway: Gateway) -> None:
    client, fakes = gateway
    resp = await ask(client, chat("m-q8"), key=FREE, variant="nope")
    assert resp.status == 200
    assert "X-Model-Variant" not in resp.headers  # named directly: a model like any other
    assert served(fakes) == [0, 1]


async def test_the_access_log_line_names_the_variant(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    client, _ = gateway
    await ask(client, key=FREE)
    await ask(client, chat("m"), key=FREE)
    await settle(client)
    routed, direct = access_lines(capsys.readouterr().err)
    assert (routed["model"], routed["variant"]) == ("chat", assigned("static:f"))
    assert (direct["model"], direct["variant"]) == ("m", None)


async def test_the_variant_counter_counts_each_experiments_requests(gateway: Gateway) -> None:
    client, _ = gateway
    name = "llama_gateway_variant_requests_total"
    before = await scrape(client)
    for variant in ("m", "m-q8"):  # every variant's series is there from the start
        assert value(before, name, experiment="chat-2026-12", variant=variant, status="2xx") == 0
    await ask(client, key=TESTER, variant="m-q8")
    await ask(client, chat(fake={"status": 400}), key=TESTER, variant="m-q8")
    await ask(client, chat("broken"), key=FREE)
    await ask(client, key=FREE, variant="m")  # refused before a variant is chosen: not counted
    after = await scrape(client)
    assert value(after, name, experiment="chat-2026-12", variant="m-q8", status="2xx") == 1
    assert value(after, name, experiment="chat-2026-12", variant="m-q8", status="4xx") == 1
    assert value(after, name, experiment="chat-2026-12", variant="m", status="4xx") == 0
    assert value(after, name, experiment="broken-1", variant="m-dead", status="5xx") == 1
    # The core's request counter: the served model, and the experiment's name if refused.
    requests = "llama_gateway_requests_total"
    labels = {"endpoint": "chat.completions", "tier": "free"}
    assert value(after, requests, model="chat", status="4xx", **labels) == 1
    assert value(after, requests, model="m-dead", status="5xx", **labels) == 1


async def test_without_an_auth_policy_callers_are_told_apart_by_address(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    _, urls = await start_fakes(aiohttp_server, 2)
    config = gateway_config(urls[0], models=models(urls), variants=VARIANTS)
    client = await aiohttp_client(create_app(config))
    for _ in range(3):
        resp = await ask(client)
        assert resp.headers["X-Model-Variant"] == assigned("ip:127.0.0.1")
    chosen = await ask(client, variant="m")  # no tier, so no permission to choose
    assert chosen.status == 403
