"""Variants live in the policy document: a changed experiment applies on reload, without a
restart, and a reload that leaves the experiment alone leaves every caller its variant.
The usage row names the experiment as its model and the variant that served it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from tests.support.gateways import gateway_config
from tests.support.replicas import start_fakes
from tests.support.usage import usage_settings, wait_for_rows
from tests.support.variants import AUTH, EXPERIMENT, FREE, TIERS, ask, assigned, chat, models
from tests.support.waiting import eventually

CALLERS = [f"10.0.1.{i}" for i in range(40)]


def document(variants: dict[str, Any], tiers: dict[str, Any] = TIERS) -> str:
    return orjson.dumps({"tiers": tiers, "policies": [AUTH], "variants": variants}).decode()


@pytest.fixture
async def reloadable(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> tuple[TestClient[Any, Any], Path]:
    _, urls = await start_fakes(aiohttp_server, 2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(document({"chat": EXPERIMENT}))  # JSON is YAML
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text("policy_file: policy.yaml\n")
    config = gateway_config(
        urls[0],
        models=models(urls),
        storage={"data_dir": str(tmp_path)},
        policy_file="policy.yaml",
        policy_reload_seconds=0.05,
    )
    client = await aiohttp_client(create_app(config, config_path=config_file))
    return client, policy


async def rewrite(client: TestClient[Any, Any], policy: Path, text: str) -> None:
    """Change the policy file and wait until the gateway has taken it in."""
    runtime = client.app[STATE].runtime
    reloads = runtime.reloads
    await asyncio.to_thread(policy.write_text, text)
    await eventually(lambda: runtime.reloads == reloads + 1)


async def variants_of(client: TestClient[Any, Any], model: str = "chat") -> list[str]:
    found = []
    for address in CALLERS:
        resp = await ask(client, chat(model), address=address)
        assert resp.status == 200
        found.append(resp.headers["X-Model-Variant"])
    return found


async def test_a_reload_that_keeps_the_experiment_keeps_every_callers_variant(
    reloadable: tuple[TestClient[Any, Any], Path],
) -> None:
    client, policy = reloadable
    before = await variants_of(client)
    assert before == [assigned(f"ip:{address}") for address in CALLERS]
    assert set(before) == {"m", "m-q8"}
    tiers = {**TIERS, "free": {"priority": 3}}
    reordered = {**EXPERIMENT, "choices": dict(reversed(EXPERIMENT["choices"].items()))}
    await rewrite(client, policy, document({"chat": reordered}, tiers))
    assert await variants_of(client) == before


async def test_a_new_experiment_name_draws_the_callers_afresh_without_a_restart(
    reloadable: tuple[TestClient[Any, Any], Path],
) -> None:
    client, policy = reloadable
    before = await variants_of(client)
    renamed = {**EXPERIMENT, "experiment": "chat-2027-01"}
    await rewrite(client, policy, document({"chat": renamed}))
    after = await variants_of(client)
    assert after == [assigned(f"ip:{address}", renamed) for address in CALLERS]
    assert after != before


async def test_weights_and_experiments_change_on_reload(
    reloadable: tuple[TestClient[Any, Any], Path],
) -> None:
    client, policy = reloadable
    assert (await ask(client, chat("code"), key=FREE)).status == 404  # no such model yet
    everyone_on_q8 = {"experiment": "chat-2026-12", "choices": {"m-q8": 1}}
    code = {"experiment": "code-1", "choices": {"m": 1}}
    await rewrite(client, policy, document({"chat": everyone_on_q8, "code": code}))
    assert set(await variants_of(client)) == {"m-q8"}
    assert set(await variants_of(client, "code")) == {"m"}
    metrics = await (await client.get("/metrics")).text()
    assert 'experiment="code-1",status="2xx",variant="m"} 40.0' in metrics


async def test_a_reload_naming_an_unknown_model_keeps_the_experiment_in_force(
    reloadable: tuple[TestClient[Any, Any], Path],
) -> None:
    client, policy = reloadable
    runtime = client.app[STATE].runtime
    before = await variants_of(client)
    unknown = document({"chat": {**EXPERIMENT, "choices": {"m": 1, "m-f16": 1}}})
    await asyncio.to_thread(policy.write_text, unknown)
    await eventually(lambda: runtime.failures == 1)
    assert await variants_of(client) == before


async def test_the_usage_row_names_the_experiment_and_the_variant(
    aiohttp_client: Any, aiohttp_server: Any, pg_url: str, tmp_path: Path
) -> None:
    _, urls = await start_fakes(aiohttp_server, 2)
    prices = {"m-q8": {"prompt_per_million": 1e6}, "m": {"prompt_per_million": 1e3}}
    config = gateway_config(
        urls[0],
        models=models(urls),
        storage={"database_url": pg_url, "data_dir": str(tmp_path)},
        tiers=TIERS,
        policies=[usage_settings(prices=prices), AUTH],
        variants={"chat": EXPERIMENT},
    )
    client = await aiohttp_client(create_app(config))
    variant = assigned("static:f")
    assert (await ask(client, key=FREE)).status == 200
    assert (await ask(client, chat("m"), key=FREE)).status == 200
    assert (await ask(client, key=FREE, variant="m")).status == 403
    rows = sorted(await wait_for_rows(pg_url, 3), key=lambda row: row["started_at"])
    routed, direct, refused = ((r["model"], r["variant"], r["cost"]) for r in rows)
    # The fake counts 5 prompt tokens; the served model's price applies.
    assert routed == ("chat", variant, 5.0 if variant == "m-q8" else 0.005)
    assert direct == ("m", None, 0.005)
    assert refused == ("chat", None, 0.0)
