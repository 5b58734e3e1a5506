"""A hit with the other policies: a request for rate limits, no tokens; a cached usage row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.caches import CHAT0, ask, cache_policy, known_identity, stored
from tests.support.gateways import GatewayFactory
from tests.support.rate_limits import (
    SHARED_REDIS,
    STORAGE,
    limit_policy,
    quota_used,
)
from tests.support.usage import PRICES, pg_rows, usage_settings
from tests.support.waiting import eventually


async def test_a_hit_counts_as_a_request_and_charges_no_tokens(
    make_gateway: GatewayFactory, prefix: str
) -> None:
    limits = {"requests_per_minute": 100, "tokens_per_day": 100_000}
    client = await make_gateway(
        storage=STORAGE,
        policies=[limit_policy(prefix, default=limits), cache_policy(key_prefix=prefix)],
    )
    await known_identity(client)
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        await ask(client, CHAT0)
        await stored(client)
        assert quota_used(store, prefix) == 8  # the fake's usage: 5 + 3 tokens
        resp = await client.post("/v1/chat/completions", json=CHAT0)
        await resp.read()
        assert resp.headers["X-Cache"] == "HIT"
        assert resp.headers["x-ratelimit-remaining-requests"] == "98"

        async def settled() -> bool:
            return quota_used(store, prefix) == 8

        await eventually(settled)  # the hit's reservation given back, nothing charged
    finally:
        store.close()


@pytest.mark.parametrize(("cached_price", "cost"), [(0.0, 0.0), (500.0, 8 * 500 / 1e6)])
async def test_a_hits_usage_row_is_cached_with_its_tokens_and_cached_price(
    make_gateway: GatewayFactory, pg_url: str, tmp_path: Path, cached_price: float, cost: float
) -> None:
    prices: dict[str, Any] = {"fake": {**PRICES["fake"], "cached_per_million": cached_price}}
    client = await make_gateway(
        storage={"database_url": pg_url, "data_dir": str(tmp_path / "data")},
        policies=[
            {"type": "request_id"},
            usage_settings(prices=prices),
            cache_policy(),
        ],
    )
    await known_identity(client)
    await ask(client, CHAT0, **{"X-Request-ID": "miss"})
    await stored(client)
    await ask(client, CHAT0, **{"X-Request-ID": "hit"})
    await client.close()  # shutdown flushes the writer
    rows = {row["request_id"]: row for row in await pg_rows(pg_url)}
    miss, hit = rows["miss"], rows["hit"]
    assert (miss["cached"], hit["cached"]) == (False, True)
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (5, 3)
    assert hit["upstream"] is None
    assert hit["cost"] == pytest.approx(cost)
    assert miss["cost"] > 0
