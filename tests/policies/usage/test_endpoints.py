"""Usage of the endpoints that generate nothing: their rows carry what the upstream counted."""

from __future__ import annotations

from tests.support.usage import AUTH, STATIC_KEY, UsageGateway, usage_settings, wait_for_rows

RERANK = {"model": "fake", "query": "red apple", "documents": ["a blue sky", "a red apple"]}


async def test_rerank_usage_is_recorded_from_the_upstreams_answer(
    usage_gateway: UsageGateway, pg_url: str
) -> None:
    client = await usage_gateway(usage_settings(), AUTH, database_url=pg_url)
    headers = {"Authorization": f"Bearer {STATIC_KEY}"}
    resp = await client.post("/v1/rerank", json=RERANK, headers=headers)
    answered = (await resp.json())["usage"]
    (row,) = await wait_for_rows(pg_url, 1)
    assert (row["endpoint"], row["model"], row["status"]) == ("rerank", "fake", 200)
    assert row["prompt_tokens"] == answered["prompt_tokens"] > 0
    assert row["completion_tokens"] == 0
