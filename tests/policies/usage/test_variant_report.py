"""`--by variant`: the variants of an experiment compared, the same from PostgreSQL and
SQLite, time to first byte included."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.cli import main
from policies.usage.record import UsageRow
from policies.usage.report import ReportRow
from policies.usage.sqlite_store import SqliteUsageStore
from policies.usage.store import PostgresUsageStore, UsageStore
from tests.support.usage import NOW, ROWS, row

# Variant a: 10 answers, first bytes after 1..10 ms; variant b: 4, one failed before its
# first byte, the others' after 30, 10, 20 ms; each row's latency is ten times its number.
A_TTFT = [float(n) for n in range(1, 11)]
B_TTFT = [30.0, None, 10.0, 20.0]


def variant_rows() -> list[UsageRow]:
    a = [
        row(200 + i, model="chat", variant="a", ttft_ms=t, latency_ms=10.0 * (i + 1), cost=0.5)
        for i, t in enumerate(A_TTFT)
    ]
    b = [
        row(
            300 + i,
            model="chat",
            variant="b",
            ttft_ms=t,
            latency_ms=100.0 + i,
            status=502 if t is None else 200,
            outcome="upstream_error" if t is None else "ok",
            prompt_tokens=20,
            cost=1.0,
        )
        for i, t in enumerate(B_TTFT)
    ]
    return [*a, *b]


@pytest.fixture
async def stores(pg_url: str, tmp_path: Path) -> AsyncIterator[list[UsageStore]]:
    opened: list[UsageStore] = [PostgresUsageStore(pg_url), SqliteUsageStore(tmp_path / "u.db")]
    for store in opened:
        await store.connect()
        await store.insert([*ROWS, *variant_rows()])
    yield opened
    for store in opened:
        await store.close()


def percentile(values: list[float], q: int) -> float:
    """percentile_cont: linear interpolation between the closest ranks."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def report(store: UsageStore) -> dict[str | None, ReportRow]:
    rows, _ = await store.report(NOW - timedelta(hours=1), NOW, "variant")
    return {r.group: r for r in rows}


async def test_both_stores_compare_the_variants_alike(stores: list[UsageStore]) -> None:
    b_ttft = [t for t in B_TTFT if t is not None]
    for store in stores:
        groups = await report(store)
        assert list(groups) == [None, "a", "b"], store.dependency  # the busiest first
        a, b = groups["a"], groups["b"]
        assert (a.requests, a.prompt_tokens, a.errors, a.cost) == (10, 100, 0, 5.0)
        assert (b.requests, b.prompt_tokens, b.errors, b.cost) == (4, 80, 1, 4.0)
        assert a.p50_ms == pytest.approx(55.0)
        assert a.p95_ms == pytest.approx(percentile([10.0 * n for n in range(1, 11)], 95))
        assert a.ttft_p50_ms == pytest.approx(5.5)
        assert a.ttft_p95_ms == pytest.approx(percentile(A_TTFT, 95))
        # The failed request has no first byte: it is left out, not counted as 0.
        assert b.ttft_p50_ms == pytest.approx(20.0)
        assert b.ttft_p95_ms == pytest.approx(percentile(b_ttft, 95))
        assert groups[None].requests == len(ROWS) - 1  # the old row is outside the range


async def test_a_group_without_any_first_byte_has_no_ttft(stores: list[UsageStore]) -> None:
    refused = [row(400 + i, variant="c", ttft_ms=None, status=429) for i in range(3)]
    for store in stores:
        await store.insert(refused)
        c = (await report(store))["c"]
        assert (c.requests, c.ttft_p50_ms, c.ttft_p95_ms) == (3, None, None)
        assert c.p50_ms is not None


async def _fill_sqlite(path: Path) -> None:
    store = SqliteUsageStore(path)
    await store.connect()
    await store.insert(variant_rows())
    await store.close()


def test_the_usage_command_groups_by_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"  # the embedded store, under data_dir
    config.write_text(f"storage: {{data_dir: '{tmp_path / 'data'}'}}\n")
    monkeypatch.setenv("LLAMA_GATEWAY_CONFIG", str(config))
    asyncio.run(_fill_sqlite(tmp_path / "data" / "gateway.db"))
    assert main(["usage", "--since", "1h", "--by", "variant"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["VARIANT", "REQUESTS"]
    a = lines[2].split()  # p95s land on ...5: their last digit is the float's to round
    assert a[:8] == ["a", "10", "100", "0.0%", "50", "0", "5.0000", "55.0"]
    assert (a[9], len(a)) == ("5.5", 11)
    assert lines[3].split()[:6] == ["b", "4", "80", "0.0%", "20", "1"]
    assert lines[4].split()[:2] == ["TOTAL", "14"]
