"""Shared fixtures: a fake llama-server and a gateway in front of it, both in the test's loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import PG_URL, GatewayFactory, gateway_config
from tests.support.redis_cluster import Cluster, redis_cluster


@pytest.fixture
def fake() -> FakeLlama:
    return FakeLlama()


@pytest.fixture
async def fake_url(fake: FakeLlama, aiohttp_server: Any) -> str:
    server: TestServer = await aiohttp_server(fake.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def make_gateway(aiohttp_client: Any, fake_url: str) -> GatewayFactory:
    async def make(**sections: Any) -> TestClient[Any, Any]:
        config = gateway_config(fake_url, **sections)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()


@pytest.fixture
async def pg_url() -> Any:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    import uuid

    import asyncpg

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster for the tests that neither kill nor move anything (keys under
    prefixes of their own)."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis Cluster of the test's own: it may kill nodes and move slots."""
    with redis_cluster(tmp_path / "cluster") as cluster:
        yield cluster
