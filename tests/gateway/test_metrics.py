"""`/metrics`: each request recorded once, with label values from bounded sets only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.endpoints import NAMES
from policies.auth.metrics import REASONS
from policies.cache.metrics import ACTIONS as CACHE_ACTIONS
from policies.cache.metrics import REASONS as BYPASS_REASONS
from policies.cache.metrics import RESULTS as CACHE_RESULTS
from policies.rate_limit.metrics import ACTIONS, LIMITS
from policies.usage.metrics import DEPENDENCIES, DESTINATIONS
from tests.support.auth import sha256
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, GatewayFactory, gateway_config
from tests.support.metrics import scrape, value

STREAM = {**CHAT, "stream": True}
KEY = "metrics-test-static-key-0123456789"


def names(samples: dict[tuple[str, frozenset[Any]], float]) -> set[str]:
    return {name for name, _ in samples}


async def test_a_request_is_counted_once_by_model_endpoint_status_and_tier(
    gateway: TestClient[Any, Any],
) -> None:
    assert (await gateway.post("/v1/chat/completions", json=CHAT)).status == 200
    samples = await scrape(gateway)
    labels = {"model": "fake", "endpoint": "chat.completions", "status": "2xx", "tier": "none"}
    assert value(samples, "llama_gateway_requests_total", **labels) == 1
    duration = {"model": "fake", "endpoint": "chat.completions"}
    assert value(samples, "llama_gateway_request_duration_seconds_count", **duration) == 1
    assert value(samples, "llama_gateway_upstream_duration_seconds_count", **duration) == 1
    assert value(samples, "llama_gateway_overhead_seconds_count", **duration) == 1
    tokens = {"model": "fake", "tier": "none"}
    assert value(samples, "llama_gateway_tokens_total", type="prompt", **tokens) == 5
    assert value(samples, "llama_gateway_tokens_total", type="completion", **tokens) == 3


async def test_unconfigured_model_names_share_one_label_value(
    gateway: TestClient[Any, Any],
) -> None:
    for name in ("nope", "other", "x" * 200):
        resp = await gateway.post("/v1/chat/completions", json={**CHAT, "model": name})
        assert resp.status == 404
    samples = await scrape(gateway)
    labels = {"model": "unknown", "endpoint": "chat.completions", "status": "4xx", "tier": "none"}
    assert value(samples, "llama_gateway_requests_total", **labels) == 3
    models = {dict(labels)["model"] for name, labels in samples if "model" in dict(labels)}
    assert models <= {"fake", "unknown", "none"}


async def test_rejected_requests_have_no_upstream_time_or_overhead(
    gateway: TestClient[Any, Any],
) -> None:
    assert (await gateway.post("/v1/chat/completions", data=b"{not json")).status == 400
    samples = await scrape(gateway)
    duration = {"model": "none", "endpoint": "chat.completions"}
    assert value(samples, "llama_gateway_request_duration_seconds_count", **duration) == 1
    for name in ("overhead_seconds_count", "upstream_duration_seconds_count"):
        assert samples.get((f"llama_gateway_{name}", frozenset(duration.items())), 0) == 0


async def test_streams_record_time_to_first_token_and_usage(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**STREAM, "fake": {"chunks": 4}})
    await resp.read()
    samples = await scrape(gateway)
    series = {"model": "fake", "endpoint": "chat.completions"}
    assert value(samples, "llama_gateway_time_to_first_token_seconds_count", **series) == 1
    tokens = {"model": "fake", "tier": "none", "type": "completion"}
    assert value(samples, "llama_gateway_tokens_total", **tokens) == 4


async def test_upstream_errors_count_as_5xx_without_time_to_first_token(
    gateway: TestClient[Any, Any],
) -> None:
    resp = await gateway.post("/v1/chat/completions", json={**STREAM, "fake": {"status": 503}})
    assert resp.status == 503
    samples = await scrape(gateway)
    labels = {"model": "fake", "endpoint": "chat.completions", "status": "5xx", "tier": "none"}
    assert value(samples, "llama_gateway_requests_total", **labels) == 1
    series = {"model": "fake", "endpoint": "chat.completions"}
    key = ("llama_gateway_time_to_first_token_seconds_count", frozenset(series.items()))
    assert samples.get(key, 0) == 0


async def test_a_client_hanging_up_is_counted(
    gateway: TestClient[Any, Any], fake: FakeLlama
) -> None:
    resp = await gateway.post(
        "/v1/chat/completions", json={**STREAM, "fake": {"chunks": 1000, "delay": 0.05}}
    )
    await resp.content.readuntil(b"\n\n")
    resp.close()
    for _ in range(100):
        samples = await scrape(gateway)
        key = (
            "llama_gateway_client_disconnects_total",
            frozenset({"model": "fake", "endpoint": "chat.completions"}.items()),
        )
        if samples.get(key):
            break
        await asyncio.sleep(0.02)
    assert samples[key] == 1


async def test_the_core_metrics_fixed_label_sets_exist_before_anything_happens(
    gateway: TestClient[Any, Any],
) -> None:
    samples = await scrape(gateway)
    for result in ("ok", "error"):
        assert value(samples, "llama_gateway_policy_reloads_total", result=result) == 0
    assert value(samples, "llama_gateway_build_info", version="0.1.0") == 1


async def test_each_policys_fixed_label_sets_exist_at_start_up(
    every_policy: TestClient[Any, Any],
) -> None:
    client = every_policy
    samples = await scrape(client)
    for reason in REASONS:
        assert value(samples, "llama_gateway_auth_failures_total", reason=reason) == 0
    for tier in ("gold", "tin"):
        for limit in LIMITS:
            assert value(samples, "llama_gateway_rate_limited_total", tier=tier, limit=limit) == 0
    limited = {"tier": "default", "limit": "requests"}  # requests without a tier
    assert value(samples, "llama_gateway_rate_limited_total", **limited) == 0
    pairs = [("redis", action) for action in ACTIONS] + [(d, "retry") for d in DEPENDENCIES]
    for dependency, action in pairs:
        labels = {"dependency": dependency, "action": action}
        assert value(samples, "llama_gateway_dependency_errors_total", **labels) == 0
    for destination in DESTINATIONS:
        assert value(samples, "llama_gateway_usage_records_total", destination=destination) == 0
    assert value(samples, "llama_gateway_usage_queue_depth") == 0
    assert value(samples, "llama_gateway_usage_journal_bytes") == 0
    assert value(samples, "llama_gateway_usage_writer_restarts_total") == 0
    for endpoint in NAMES:
        for result in CACHE_RESULTS:
            labels = {"endpoint": endpoint, "result": result}
            assert value(samples, "llama_gateway_cache_requests_total", **labels) == 0
    for reason in BYPASS_REASONS:
        assert value(samples, "llama_gateway_cache_bypasses_total", reason=reason) == 0
    assert value(samples, "llama_gateway_cache_tokens_saved_total", model="fake") == 0
    for action in CACHE_ACTIONS:
        labels = {"dependency": "redis", "action": action}
        assert value(samples, "llama_gateway_dependency_errors_total", **labels) == 0


async def test_upstream_health_and_in_flight_are_read_at_scrape_time(
    gateway: TestClient[Any, Any], fake: FakeLlama, fake_url: str
) -> None:
    upstream = {"upstream": fake_url, "model": "fake"}
    resp = await gateway.post(
        "/v1/chat/completions", json={**STREAM, "fake": {"chunks": 1000, "delay": 0.05}}
    )
    await resp.content.readuntil(b"\n\n")
    samples = await scrape(gateway)
    assert value(samples, "llama_gateway_upstream_in_flight", **upstream) == 1
    assert value(samples, "llama_gateway_upstream_up", **upstream) == 1
    resp.close()
    fake.loading = True  # /health answers 503: the prober takes it out of rotation
    for _ in range(100):
        samples = await scrape(gateway)
        if value(samples, "llama_gateway_upstream_up", **upstream) == 0:
            break
        await asyncio.sleep(0.02)
    assert value(samples, "llama_gateway_upstream_up", **upstream) == 0
    assert value(samples, "llama_gateway_upstream_in_flight", **upstream) == 0


async def test_process_resources_are_exposed(gateway: TestClient[Any, Any]) -> None:
    found = names(await scrape(gateway))
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
    ):
        assert name in found


async def test_tier_labels_come_from_the_configured_tiers(make_gateway: GatewayFactory) -> None:
    client = await make_gateway(
        tiers={"gold": {}, "tin": {}},
        policies=[
            {
                "type": "auth",
                "api_keys": False,
                "static_keys": [
                    {
                        "hash": sha256(KEY),
                        "owner": "ops",
                        "tier": "gold",
                    }
                ],
            }
        ],
    )
    headers = {"Authorization": f"Bearer {KEY}"}
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401
    samples = await scrape(client)
    ok = {"model": "fake", "endpoint": "chat.completions", "status": "2xx", "tier": "gold"}
    assert value(samples, "llama_gateway_requests_total", **ok) == 1
    refused = {**ok, "model": "none", "status": "4xx", "tier": "none"}  # body never read
    assert value(samples, "llama_gateway_requests_total", **refused) == 1
    assert value(samples, "llama_gateway_auth_failures_total", reason="missing") == 1


async def test_a_reloaded_policy_document_brings_its_tier_names(
    aiohttp_client: Any, fake_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("tiers: {bronze: {}}\npolicies: [{type: rate_limit}]\n")
    config = gateway_config(fake_url, policy_file=str(policy), policy_reload_seconds=3600)
    client = await aiohttp_client(create_app(config, config_path=tmp_path / "gateway.yaml"))
    samples = await scrape(client)
    for limit in LIMITS:
        assert value(samples, "llama_gateway_rate_limited_total", tier="bronze", limit=limit) == 0
    policy.write_text("tiers: {silver: {}}\npolicies: [{type: rate_limit}]\n")
    assert await client.app[STATE].runtime.reload("test")
    samples = await scrape(client)
    for limit in LIMITS:
        assert value(samples, "llama_gateway_rate_limited_total", tier="silver", limit=limit) == 0
    assert client.app[STATE].runtime.metrics.tiers == {"silver"}
