"""The example policy and command of docs/writing-a-policy.md run as the page says."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.policy import Chain, PolicyEnv
from gateway.resources import Resources
from tests.support.gateways import CHAT, gateway_config

PAGE = Path(__file__).parents[2] / "docs" / "writing-a-policy.md"


def section_code(heading: str) -> dict[str, Any]:
    """Runs the first Python block under `## heading`; returns what it defined."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"{PAGE.name}: no Python block under '## {heading}'"
    namespace: dict[str, Any] = {}
    exec(compile(match[1], f"{PAGE.name} ({heading})", "exec"), namespace)
    return namespace


async def chat_through_example(
    aiohttp_client: Any, fake_url: str, **settings: Any
) -> tuple[Any, Metrics]:
    """One chat request through a gateway whose chain is the example policy alone."""
    cls = section_code("A complete example")["MaintenancePolicy"]
    config = gateway_config(fake_url)
    env = PolicyEnv(config, {}, Resources())
    policy = cls(cls.Settings.model_validate(settings), env)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config, Chain([policy])))
    return await client.post("/v1/chat/completions", json=CHAT), env.metrics


def refused(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("llama_gateway_maintenance_refused_total")


async def test_the_example_policy_answers_503_while_enabled_and_counts_it(
    aiohttp_client: Any, fake_url: str
) -> None:
    resp, metrics = await chat_through_example(aiohttp_client, fake_url, enabled=True)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "60"
    assert (await resp.json())["error"]["code"] == "maintenance"
    assert refused(metrics) == 1


async def test_the_example_policy_lets_requests_through_while_disabled(
    aiohttp_client: Any, fake_url: str
) -> None:
    resp, metrics = await chat_through_example(aiohttp_client, fake_url, enabled=False)
    assert resp.status == 200
    assert refused(metrics) == 0


def test_the_example_command_prints_the_tiers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("tiers: {free: {}, premium: {}}\n", encoding="utf-8")
    top = argparse.ArgumentParser()
    section_code("Commands")["register"](top.add_subparsers())
    args = top.parse_args(["maintenance", "--config", str(config)])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "['free', 'premium']\n"
