"""Optional OpenTelemetry tracing: a span per request that continues the caller's trace."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import STATE
from gateway.config import ConfigError, GatewayConfig, TracingConfig
from gateway.relay import Relay
from gateway.tracing import Tracing
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory, gateway_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def traced(
    make_gateway: GatewayFactory, **sections: Any
) -> tuple[TestClient[Any, Any], InMemorySpanExporter]:
    """A gateway whose relay exports spans to memory instead of OTLP."""
    client = await make_gateway(**sections)
    state = client.app[STATE]
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(enabled=True), exporter)
    old = state.relay
    assert old is not None
    state.relay = Relay(state.config, state.runtime, state.pool, old.session, tracing)
    return client, exporter


def finished(client: TestClient[Any, Any], exporter: InMemorySpanExporter) -> list[Any]:
    relay = client.app[STATE].relay
    assert relay is not None
    assert relay.tracing is not None
    relay.tracing.close()  # exports what is queued
    return list(exporter.get_finished_spans())


async def test_a_request_span_continues_the_callers_trace(
    make_gateway: GatewayFactory, fake: FakeLlama
) -> None:
    client, exporter = await traced(make_gateway)
    resp = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"traceparent": TRACEPARENT}
    )
    assert resp.status == 200
    [span] = finished(client, exporter)
    assert span.name == "chat.completions"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes["gen_ai.request.model"] == "fake"
    assert span.attributes["gen_ai.usage.output_tokens"] == 3
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["llama_gateway.attempts"] == 1
    # llama-server gets this span as the parent, in the same trace.
    sent = fake.headers[-1]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"


async def test_an_upstream_failure_marks_the_span_as_an_error(
    make_gateway: GatewayFactory,
) -> None:
    client, exporter = await traced(make_gateway)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 500}})
    assert resp.status == 500
    [span] = finished(client, exporter)
    assert span.status.status_code == StatusCode.ERROR


async def test_a_refused_request_is_not_a_server_error(make_gateway: GatewayFactory) -> None:
    client, exporter = await traced(make_gateway)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert resp.status == 404
    [span] = finished(client, exporter)
    assert span.status.status_code == StatusCode.UNSET


async def test_an_upstream_refusing_the_request_is_not_a_server_error(
    make_gateway: GatewayFactory,
) -> None:
    client, exporter = await traced(make_gateway)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "fake": {"status": 400}})
    assert resp.status == 400
    [span] = finished(client, exporter)
    assert span.status.status_code == StatusCode.UNSET


async def test_spans_are_exported_over_otlp_http(
    aiohttp_server: Any, fake_url: str, aiohttp_client: Any
) -> None:
    from aiohttp import web

    received: list[bytes] = []

    async def collector(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collector)
    server = await aiohttp_server(app)
    config = gateway_config(
        fake_url, tracing={"enabled": True, "endpoint": str(server.make_url("/v1/traces"))}
    )
    from gateway.app import create_app

    client = await aiohttp_client(create_app(config))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await client.close()  # shutting down flushes the queued spans
    assert received
    assert b"chat.completions" in received[0]


def test_tracing_is_off_by_default() -> None:
    assert GatewayConfig().tracing.enabled is False


async def test_without_tracing_the_callers_traceparent_still_reaches_the_upstream(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    assert (await gateway.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    assert fake.headers[-1]["traceparent"] == TRACEPARENT
    assert fake.headers[-1]["tracestate"] == "vendor=1"


def test_turning_tracing_on_without_opentelemetry_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, fake_url: str
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as raised:
        gateway_config(fake_url, tracing={"enabled": True})
    assert raised.value.problems == [
        "tracing.enabled: OpenTelemetry is not installed: pip install 'llama-gateway[otel]'"
    ]


async def test_the_span_counts_the_attempts_and_names_the_last_upstream(
    make_gateway: GatewayFactory, fake_url: str, aiohttp_server: Any
) -> None:
    failing = FakeLlama()
    failing.fail(0, 1)  # drops the first connection before the response head
    first = str((await aiohttp_server(failing.app())).make_url("")).rstrip("/")
    # By fewest in flight: the failing upstream is tried first.
    models = {"fake": {"upstreams": [first, fake_url], "routing": "least_in_flight"}}
    client, exporter = await traced(make_gateway, models=models)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    [span] = finished(client, exporter)
    assert span.attributes["llama_gateway.attempts"] == 2
    assert span.attributes["llama_gateway.upstream"] == fake_url
