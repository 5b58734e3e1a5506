"""Fixtures for the usage tests: a gateway with the usage policy, rows read back directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import registry
from gateway.app import create_app
from tests.support.gateways import gateway_config
from tests.support.usage import Scripted, UsageGateway, usage_settings


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {**registry.available(), "scripted": Scripted}
    monkeypatch.setattr(registry, "available", lambda: known)


@pytest.fixture
def usage_gateway(aiohttp_client: Any, fake_url: str, tmp_path: Path) -> UsageGateway:
    async def make(
        *policies: dict[str, Any], database_url: str | None = None, **sections: Any
    ) -> TestClient[Any, Any]:
        chain = list(policies) or [{"type": "request_id"}, usage_settings()]
        config = gateway_config(
            fake_url,
            storage={"database_url": database_url, "data_dir": str(tmp_path / "data")},
            tiers={"premium": {}},
            policies=chain,
            **sections,
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return make
