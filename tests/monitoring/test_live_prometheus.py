"""Every query of the dashboard and every alert rule, run by a real Prometheus against a
live gateway under traffic: each must be valid and return data."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.monitoring.stack import ALERTS, ROOT, Stack, fake_llama, live_stack

DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "llama-gateway.json"
# Grafana replaces `$__rate_interval` with at least four scrape intervals; 1s scrapes here.
RATE_INTERVAL = "30s"
# An alert is `MEASURE OP THRESHOLD`; `MEASURE OP bool THRESHOLD` keeps every series.
ALERT_FORM = re.compile(r"^(?P<measure>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>[-+.\deE]+)$")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs Prometheus: apt-get install -y prometheus")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for item in dashboard["panels"]:
        for panel in [item, *item.get("panels", [])]:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def as_bool(expr: str) -> str:
    match = ALERT_FORM.match(" ".join(expr.split()))
    assert match, f"alert expression is not MEASURE OP THRESHOLD: {expr}"
    return f"{match['measure']} {match['op']} bool {match['threshold']}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the module: starting it takes seconds."""
    binary = prometheus_binary()
    async with (
        fake_llama() as fake_url,
        live_stack(fake_url, tmp_path_factory.mktemp("live"), binary) as live,
    ):
        for _ in range(3):
            await live.traffic()
            await asyncio.sleep(0.5)
        await until_scraped_after(live, time.time())
        yield live


async def until_scraped_after(stack: Stack, moment: float) -> None:
    """Until both targets have been scraped twice more since `moment`."""
    for _ in range(200):
        body = await stack.query(f"timestamp(up) > {moment + 1.2}")
        if len(body["data"]["result"]) == 2:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("Prometheus stopped scraping")


@pytest.mark.asyncio(loop_scope="module")
async def test_every_dashboard_query_and_alert_returns_data(stack: Stack) -> None:
    queries = [(t, e.replace("$__rate_interval", RATE_INTERVAL)) for t, e in dashboard_queries()]
    queries += [(rule["alert"], as_bool(rule["expr"])) for rule in alert_rules()]
    assert len(queries) > 30
    failures = []
    for title, expr in queries:
        body = await stack.query(expr)
        if body["status"] != "success":
            failures.append(f"{title}: {expr}: {body.get('error')}")
        elif not body["data"]["result"]:
            failures.append(f"{title}: {expr}: no data")
    assert not failures, "\n".join(failures)


@pytest.mark.asyncio(loop_scope="module")
async def test_prometheus_evaluates_every_alert_rule_without_error(stack: Stack) -> None:
    names = {rule["alert"] for rule in alert_rules()}
    for _ in range(100):
        async with stack.session.get(stack.prometheus + "/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        if all(r.get("lastEvaluation", "").startswith("2") for r in rules.values()):
            break
        await asyncio.sleep(0.1)
    assert set(rules) == names
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    firing = {name for name, rule in rules.items() if rule["state"] != "inactive"}
    # Rows wait in the usage journal up to flush_seconds, so over a few seconds its size
    # goes up and down, and a rising stretch makes this alert pending (never firing: that
    # takes 30 minutes of growth).
    growing = "LlamaGatewayUsageJournalGrowing"
    assert firing <= {"LlamaGatewayHighErrorRate", "LlamaGatewayDependencyErrors", growing}, firing
    assert rules[growing]["state"] != "firing"


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs promtool: apt-get install -y prometheus")
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    result = subprocess.run(
        [promtool, "test", "rules", str(ROOT / "monitoring" / "alerts_test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
