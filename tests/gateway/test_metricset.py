"""Policies register their own metrics: once per name, the same metric after a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import registry
from gateway.app import STATE, create_app
from gateway.config import ConfigError
from gateway.metrics import Metrics
from gateway.metricset import NAMESPACE, MetricConflict
from gateway.policy import Policy, PolicyEnv
from gateway.resources import Resources
from tests.support.gateways import CHAT, gateway_config

ROOT = Path(__file__).resolve().parents[2]
AUTH = "policies: [{type: auth, api_keys: false}]\n"
# Every policy of this project, each with what makes it register all of its metrics.
PROJECT_POLICIES: list[dict[str, Any]] = [
    {"type": "request_id"},
    {"type": "usage"},
    {"type": "auth", "api_keys": False},
    {"type": "rate_limit", "default": {"requests_per_minute": 1}},
]


class Clash(Policy):
    """Asks for the auth policy's metric under another type."""

    name = "clash"

    def __init__(self, settings: Any, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        env.metrics.gauge("auth_failures", "Something else.")


@pytest.fixture
def clash(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {**registry.available(), "clash": Clash}
    monkeypatch.setattr(registry, "available", lambda: known)


def family_names(metrics: Metrics) -> set[str]:
    return {family.name for family in metrics.registry.collect()}


def policy_metric_names(tmp_path: Path) -> set[str]:
    """The metrics the project's policies register, found by building them."""
    config = gateway_config("http://127.0.0.1:9", storage={"data_dir": str(tmp_path)})
    metrics = Metrics()
    registry.build_chain(PROJECT_POLICIES, PolicyEnv(config, {}, Resources(), metrics))
    return family_names(metrics) - family_names(Metrics())


def test_asking_twice_gives_the_same_metric() -> None:
    metrics = Metrics()
    counter = metrics.counter("things", "Things.", ("kind",))
    assert metrics.counter("things", "Things.", ("kind",)) is counter
    gauge = metrics.gauge("level", "Level.", mode="livemax")
    assert metrics.gauge("level", "Level.", mode="livemax") is gauge
    histogram = metrics.histogram("wait_seconds", "Waits.", buckets=(0.1, 1))
    assert metrics.histogram("wait_seconds", "Waits.", buckets=(0.1, 1)) is histogram


def test_names_get_the_gateways_prefix() -> None:
    metrics = Metrics()
    metrics.counter("things", "Things.").inc(2)
    assert metrics.registry.get_sample_value(f"{NAMESPACE}_things_total") == 2


@pytest.mark.parametrize(
    ("first", "second", "differs"),
    [
        (("counter", ("kind",)), ("counter", ("sort",)), "labels ('kind',), now ('sort',)"),
        (("counter", ()), ("gauge", ()), "type 'counter', now 'gauge'"),
        (("gauge", ()), ("gauge", (), "livemax"), "options"),
    ],
)
def test_a_second_different_definition_is_refused_naming_the_difference(
    first: tuple[Any, ...], second: tuple[Any, ...], differs: str
) -> None:
    metrics = Metrics()

    def define(kind: str, labels: tuple[str, ...], *mode: str) -> Any:
        return getattr(metrics, kind)("things", "Things.", labels, *mode)

    define(*first)
    with pytest.raises(MetricConflict, match="llama_gateway_things is defined twice") as info:
        define(*second)
    assert differs in str(info.value)


def test_a_policy_metric_cannot_take_a_core_metrics_name() -> None:
    with pytest.raises(MetricConflict, match="llama_gateway_requests is defined twice"):
        Metrics().gauge("requests", "Requests.")


def test_a_name_clashing_with_another_metrics_series_is_refused() -> None:
    metrics = Metrics()
    with pytest.raises(MetricConflict, match="clashes with the series"):
        metrics.gauge("requests_total", "Requests.")


async def test_a_reloaded_policy_counts_on_in_the_same_metric(
    aiohttp_client: Any, fake_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(AUTH)
    config = gateway_config(fake_url, policy_file=str(policy), policy_reload_seconds=3600)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    missing = {"reason": "missing"}
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401
    assert await client.app[STATE].runtime.reload("test")
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401
    metrics = client.app[STATE].runtime.metrics
    assert metrics.registry.get_sample_value("llama_gateway_auth_failures_total", missing) == 2


async def test_a_reload_whose_policy_redefines_a_metric_is_refused(
    aiohttp_client: Any,
    fake_url: str,
    tmp_path: Path,
    clash: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(AUTH)
    config = gateway_config(fake_url, policy_file=str(policy), policy_reload_seconds=3600)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    policy.write_text("policies: [{type: auth, api_keys: false}, {type: clash}]\n")
    assert not await client.app[STATE].runtime.reload("test")
    failure = next(r for r in caplog.records if r.name == "gateway.reload")
    assert "llama_gateway_auth_failures is defined twice" in failure.problems[0]
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401  # auth stays


def test_a_policy_redefining_a_metric_stops_the_start(
    fake_url: str, tmp_path: Path, clash: None
) -> None:
    policies = [{"type": "auth", "api_keys": False}, {"type": "clash"}]
    with pytest.raises(ConfigError) as raised:  # one line naming the entry, no traceback
        create_app(gateway_config(fake_url, policies=policies))
    [problem] = raised.value.problems
    assert problem.startswith("policies[1] (clash): metric llama_gateway_auth_failures is defined")


def test_the_core_names_no_policy_metric(tmp_path: Path) -> None:
    names = policy_metric_names(tmp_path)
    assert f"{NAMESPACE}_auth_failures" in names  # the policies were built
    sources = {path: path.read_text() for path in (ROOT / "gateway").rglob("*.py")}
    for name in names:
        short = name.removeprefix(f"{NAMESPACE}_")
        assert not [p.name for p, text in sources.items() if short in text], short


async def test_without_policies_no_policy_metric_is_exposed(
    gateway: TestClient[Any, Any], tmp_path: Path
) -> None:
    text = await (await gateway.get("/metrics")).text()
    assert not [name for name in policy_metric_names(tmp_path) if name in text]


def test_a_tracked_gauge_reads_its_function_at_every_scrape() -> None:
    metrics = Metrics()
    level = [3]
    metrics.track(metrics.gauge("level", "Level."), lambda: level[0])
    assert metrics.registry.get_sample_value(f"{NAMESPACE}_level") == 3
    level[0] = 5
    metrics.refresh()
    assert metrics.registry.get_sample_value(f"{NAMESPACE}_level") == 5
