"""Several fake llama-servers behind one model, and what the gateway logged about them."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.upstreams import Upstream
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import gateway_config

# Nothing listens there: a connection is refused at once.
DEAD = "http://127.0.0.1:9"


async def start_fakes(aiohttp_server: Any, count: int) -> tuple[list[FakeLlama], list[str]]:
    fakes = [FakeLlama() for _ in range(count)]
    servers = [await aiohttp_server(f.app()) for f in fakes]
    return fakes, [str(s.make_url("")).rstrip("/") for s in servers]


async def replicated(aiohttp_client: Any, urls: list[str], **sections: Any) -> TestClient[Any, Any]:
    """A gateway whose model `fake` is served by `urls`, in that order, by fewest in flight:
    the same prompt sent again goes to each upstream in turn, as these tests of failover
    and circuits want (`routing: prefix`, the default, would keep it where it was cached)."""
    models = {"fake": {"upstreams": urls, "routing": "least_in_flight"}}
    config = gateway_config(urls[0], models=models, **sections)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


def upstreams(client: TestClient[Any, Any]) -> list[Upstream]:
    return list(client.app[STATE].pool.by_model["fake"])


async def settle(client: TestClient[Any, Any]) -> None:
    """Completion work done and the access log written."""
    relay = client.app[STATE].relay
    assert relay is not None
    await relay.drain()


def access_lines(err: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "gateway.access"]


def leases_key(prefix: str, url: str) -> str:
    """The Redis key of the leases on `url`'s slots (`gateway.leases`, `key_prefix` `prefix`)."""
    return f"{prefix}upstream:{{{url}}}:leases"
