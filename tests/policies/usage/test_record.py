"""What a usage row says about an answer served from the response cache."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from gateway.context import RequestContext
from policies.usage.record import Price, RowBuilder

PRICES = {
    "gemma": Price(prompt_per_million=100, completion_per_million=400, cached_per_million=10),
    "*": Price(prompt_per_million=1, completion_per_million=2),
}


def answered(model: str, cached: bool) -> RequestContext:
    ctx = RequestContext(make_mocked_request("POST", "/v1/chat/completions"), "chat", 1000)
    ctx.model, ctx.status, ctx.cached = model, 200, cached
    ctx.usage = {"prompt_tokens": 30_000, "completion_tokens": 20_000, "total_tokens": 50_000}
    return ctx


def test_a_cached_answer_keeps_its_tokens_and_costs_the_cached_price() -> None:
    row = RowBuilder(PRICES).build(answered("gemma", cached=True))
    assert row.cached is True
    assert (row.prompt_tokens, row.completion_tokens) == (30_000, 20_000)
    assert row.cost == 50_000 * 10 / 1e6


def test_without_a_cached_price_a_cached_answer_is_free_and_a_fresh_one_is_not() -> None:
    builder = RowBuilder(PRICES)
    assert builder.build(answered("other", cached=True)).cost == 0.0
    fresh = builder.build(answered("other", cached=False))
    assert fresh.cached is False
    assert fresh.cost == (30_000 * 1 + 20_000 * 2) / 1e6
