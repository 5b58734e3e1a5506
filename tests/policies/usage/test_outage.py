"""Nothing is lost while PostgreSQL is unreachable: the journal holds rows and replays them."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.gateways import CHAT
from tests.support.tcp_proxy import TcpProxy
from tests.support.usage import UsageGateway, pg_rows, usage_settings, wait_for_rows, writer_of
from tests.support.waiting import eventually


async def send_many(client: TestClient[Any, Any], ids: range, parallel: int = 10) -> None:
    async def one(i: int) -> None:
        resp = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Request-ID": f"r{i}"}
        )
        await resp.read()
        assert resp.status == 200

    for start in range(ids.start, ids.stop, parallel):
        await asyncio.gather(*(one(i) for i in range(start, min(start + parallel, ids.stop))))


def records(client: TestClient[Any, Any], destination: str) -> float:
    registry = writer_of(client).metrics.registry
    value = registry.get_sample_value(
        "llama_gateway_usage_records_total", {"destination": destination}
    )
    return value or 0.0


async def test_database_cut_mid_load_loses_nothing_and_duplicates_nothing(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    dsn = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    client = await usage_gateway(
        {"type": "request_id"}, usage_settings(batch_size=20), database_url=dsn
    )
    try:
        await send_many(client, range(0, 100))
        await wait_for_rows(pg_url, 1)  # the writer is connected and writing
        sender = asyncio.create_task(send_many(client, range(100, 200)))
        await asyncio.sleep(0)
        await proxy.close()  # while requests are flowing
        await sender
        await eventually(lambda: not writer_of(client).healthy)
        assert writer_of(client).journal.rows > 0  # the rows wait in the journal
        await proxy.start()
        await send_many(client, range(200, 300))
        rows = await wait_for_rows(pg_url, 300)
        assert records(client, "journal") == records(client, "database") == 300
        await client.close()
    finally:
        await proxy.close()
    rows = await pg_rows(pg_url)
    assert len(rows) == 300
    assert {r["request_id"] for r in rows} == {f"r{i}" for i in range(300)}


async def test_ready_reports_the_usage_database_without_leaving_rotation(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    dsn = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    client = await usage_gateway({"type": "request_id"}, usage_settings(), database_url=dsn)

    async def ready_with(database: bool) -> int:
        """/ready's status once it reports the upstream up and the database as given."""
        for _ in range(250):  # the first health probe, the writer connecting in the background
            resp = await client.get("/ready")
            checks = (await resp.json())["checks"]
            if checks == {"model:fake": True, "usage:database": database}:
                return resp.status
            await asyncio.sleep(0.02)
        raise AssertionError(f"/ready never reported usage:database={database}: {checks}")

    try:
        assert await ready_with(database=True) == 200
        await proxy.close()
        # Rows go to the journal meanwhile: reported, but the gateway stays in rotation.
        assert await ready_with(database=False) == 200
    finally:
        await proxy.close()
