"""The upstream's prompt cache as its answers report it: the cached prompt tokens of each
relayed answer are counted per upstream, logged and recorded in its usage row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from gateway import sse
from gateway.app import create_app
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import CHAT, gateway_config
from tests.support.metrics import scrape, value
from tests.support.replicas import access_lines, settle, start_fakes
from tests.support.usage import STREAM, usage_settings, wait_for_rows

PROMPT = "llama_gateway_upstream_prompt_tokens_total"
CACHED = "llama_gateway_prompt_tokens_cached_total"
ANSWERS = [CHAT, STREAM, {**STREAM, "stream_options": {"include_usage": True}}]
HOSTILE = ["12", -5, True, 1e300, 2**31, None, [3], {"n": 3}]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=4)
# What JSON can carry where a count is expected, the names read there included.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["cached_tokens", "cache_n"]) | TEXT, inner)
    ),
    max_leaves=8,
)
# A count (in range, out of range, of the wrong type) or anything at all.
COUNT = st.integers(-1, 2**31) | st.booleans() | st.integers(-(2**63), 2**64 - 1) | JSON
DETAILS = JSON | st.fixed_dictionaries({"cached_tokens": COUNT})
TIMINGS = JSON | st.fixed_dictionaries({"cache_n": COUNT, "prompt_n": COUNT})


async def served_by(aiohttp_client: Any, urls: list[str], **sections: Any) -> TestClient[Any, Any]:
    config = gateway_config(
        urls[0],
        # By fewest in flight: the same prompt goes to each upstream in turn.
        models={"fake": {"upstreams": urls, "routing": "least_in_flight"}},
        upstream={"breaker": {"enabled": False}},
        **sections,
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


async def recording(
    aiohttp_client: Any, fake_url: str, pg_url: str, tmp_path: Path
) -> TestClient[Any, Any]:
    """A gateway in front of `fake_url` with the usage policy writing to PostgreSQL."""
    storage = {"database_url": pg_url, "data_dir": str(tmp_path)}
    return await served_by(aiohttp_client, [fake_url], storage=storage, policies=[usage_settings()])


async def send(client: TestClient[Any, Any], bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()
        await resp.read()


async def counted(client: TestClient[Any, Any], url: str) -> tuple[float, float]:
    samples = await scrape(client)
    labels = {"model": "fake", "upstream": url}
    return value(samples, PROMPT, **labels), value(samples, CACHED, **labels)


async def test_each_answer_counts_its_cached_prompt_tokens_for_the_upstream_that_served_it(
    aiohttp_client: Any, aiohttp_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (bad, good), urls = await start_fakes(aiohttp_server, 2)
    bad.fail(0, 1000)  # resets every call: the answers all come from `good`, after failover
    bad.cached_tokens, good.cached_tokens = 1, 3
    client = await served_by(aiohttp_client, urls)
    assert await counted(client, urls[1]) == (0, 0)  # there from the start
    await send(client, ANSWERS * 2)
    assert bad.received, "no request tried the failing replica first"
    assert await counted(client, urls[1]) == (6 * 5, 6 * 3)
    assert await counted(client, urls[0]) == (0, 0)
    await settle(client)
    lines = access_lines(capsys.readouterr().err)
    assert [(line["prompt_tokens"], line["cached_tokens"]) for line in lines] == [(5, 3)] * 6


async def test_the_usage_row_records_the_cached_prompt_tokens(
    aiohttp_client: Any, fake: FakeLlama, fake_url: str, pg_url: str, tmp_path: Path
) -> None:
    client = await recording(aiohttp_client, fake_url, pg_url, tmp_path)
    fake.cached_tokens = 4
    await send(client, ANSWERS)
    fake.cached_tokens = 0
    await send(client, [CHAT])
    rows = await wait_for_rows(pg_url, 4)
    assert sorted(row["cached_tokens"] for row in rows) == [0, 4, 4, 4]
    assert await counted(client, fake_url) == (4 * 5, 3 * 4)


async def test_only_the_timings_count_suffices(
    aiohttp_client: Any, fake: FakeLlama, fake_url: str, pg_url: str, tmp_path: Path
) -> None:
    """Builds before 2026 report no prompt_tokens_details: llama.cpp's timings.cache_n."""
    client = await recording(aiohttp_client, fake_url, pg_url, tmp_path)
    fake.cached_tokens, fake.cache_details = 2, False
    await send(client, ANSWERS)
    rows = await wait_for_rows(pg_url, 3)
    assert [row["cached_tokens"] for row in rows] == [2, 2, 2]
    assert await counted(client, fake_url) == (3 * 5, 3 * 2)


async def test_hostile_cached_counts_are_ignored(
    aiohttp_client: Any,
    fake: FakeLlama,
    fake_url: str,
    pg_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = await recording(aiohttp_client, fake_url, pg_url, tmp_path)
    for hostile in HOSTILE:
        fake.cached_tokens = hostile
        await send(client, ANSWERS)
    sent = len(HOSTILE) * len(ANSWERS)
    rows = await wait_for_rows(pg_url, sent)
    assert [row["cached_tokens"] for row in rows] == [None] * sent
    assert all(row["prompt_tokens"] == 5 and row["status"] == 200 for row in rows)
    assert await counted(client, fake_url) == (sent * 5, 0)
    await settle(client)
    lines = access_lines(capsys.readouterr().err)
    assert [line["cached_tokens"] for line in lines] == [None] * sent


def test_the_details_count_is_preferred_to_the_timings() -> None:
    usage = {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 7}}
    assert sse.cached_tokens({"usage": usage, "timings": {"cache_n": 6}}, usage) == 7
    usage["prompt_tokens_details"] = {"cached_tokens": "7"}
    assert sse.cached_tokens({"usage": usage, "timings": {"cache_n": 6}}, usage) == 6
    assert sse.cached_tokens({"usage": usage, "timings": [6]}, usage) is None


@given(details=DETAILS, timings=TIMINGS)
def test_any_json_in_either_place_gives_a_count_or_none(details: Any, timings: Any) -> None:
    answer = {"usage": {"prompt_tokens_details": details}, "timings": timings}
    answer = orjson.loads(orjson.dumps(answer))  # as the relay gets it
    usage, found = sse.body_usage(orjson.dumps(answer))
    assert usage == answer["usage"]
    assert found is None or (type(found) is int and 0 <= found <= sse.MAX_COUNT)
    for place, key in ((details, "cached_tokens"), (timings, "cache_n")):
        if isinstance(place, dict) and type(place.get(key)) is int and 0 <= place[key] < 2**31:
            assert found == place[key]
            break
    else:
        assert found is None
