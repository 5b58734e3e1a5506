"""`GET /ready`: upstreams and the dependencies policies report, required or only reported."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from gateway import policy as policy_module
from gateway.app import create_app
from gateway.policy import Chain, Check, Policy
from tests.support.gateways import ENV, gateway_config


class Reports(Policy):
    name = "reports"

    def __init__(self, checks: Mapping[str, Check] | None = None, hang: bool = False) -> None:
        super().__init__(None, ENV)
        self.checks = checks or {}
        self.hang = hang

    async def readiness(self) -> Mapping[str, Check]:
        if self.hang:
            await asyncio.sleep(3600)
        if self.checks.get("boom"):
            raise RuntimeError("the check itself broke")
        return self.checks


async def ready(aiohttp_client: Any, fake_url: str, *policies: Policy) -> tuple[int, Any]:
    client = await aiohttp_client(create_app(gateway_config(fake_url), Chain(list(policies))))
    for _ in range(100):  # the first health probe marks the fake upstream up
        resp = await client.get("/ready")
        if (await resp.json())["checks"].get("model:fake"):
            break
        await asyncio.sleep(0.02)
    return resp.status, await resp.json()


async def test_a_failing_required_check_takes_the_gateway_out_of_rotation(
    aiohttp_client: Any, fake_url: str
) -> None:
    status, body = await ready(
        aiohttp_client, fake_url, Reports({"db": Check(False), "cache": Check(True)})
    )
    assert status == 503
    assert body["checks"] == {"model:fake": True, "db": False, "cache": True}


async def test_a_failing_check_that_is_not_required_is_only_reported(
    aiohttp_client: Any, fake_url: str
) -> None:
    status, body = await ready(aiohttp_client, fake_url, Reports({"db": Check(False, False)}))
    assert status == 200
    assert body == {
        "status": "ready",
        "draining": False,
        "checks": {"model:fake": True, "db": False},
    }


async def test_a_check_that_hangs_fails_in_bounded_time(
    aiohttp_client: Any, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_module, "READY_SECONDS", 0.1)
    status, body = await ready(aiohttp_client, fake_url, Reports(hang=True))
    assert status == 503
    assert body["checks"]["reports"] is False


async def test_a_check_that_breaks_fails_without_a_server_error(
    aiohttp_client: Any, fake_url: str
) -> None:
    status, body = await ready(aiohttp_client, fake_url, Reports({"boom": Check(True)}))
    assert status == 503
    assert body["checks"]["reports"] is False
