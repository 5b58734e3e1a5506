"""Hot reload of the policy document: valid files take effect, invalid ones change nothing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.runtime import PolicyRuntime
from tests.support.gateways import CHAT, gateway_config

VALID_A = "policies:\n  - {type: request_id, header: X-Trace-A}\n"
VALID_B = "policies:\n  - {type: request_id, header: X-Trace-B}\n"
INVALID = "policies:\n  - {type: request_id, header: X-Trace-C, colour: red}\n"


@pytest.fixture
async def reloadable(
    aiohttp_client: Any, fake_url: str, tmp_path: Path
) -> tuple[TestClient[Any, Any], Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(VALID_A)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text("policy_file: policy.yaml\n")
    config = gateway_config(fake_url, policy_file="policy.yaml", policy_reload_seconds=0.05)
    client = await aiohttp_client(create_app(config, config_path=config_file))
    return client, policy


def runtime_of(client: TestClient[Any, Any]) -> PolicyRuntime:
    return client.app[STATE].runtime


async def header_names(client: TestClient[Any, Any]) -> set[str]:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    return {h for h in resp.headers if h.startswith("X-Trace")}


async def wait_until(predicate: Any) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_changed_file_takes_effect_for_new_requests(reloadable: Any) -> None:
    client, policy = reloadable
    assert await header_names(client) == {"X-Trace-A"}
    policy.write_text(VALID_B)
    await wait_until(lambda: runtime_of(client).reloads == 1)
    assert await header_names(client) == {"X-Trace-B"}


async def test_invalid_file_keeps_the_old_policy_and_counts_the_failure(
    reloadable: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client, policy = reloadable
    policy.write_text(INVALID)
    await wait_until(lambda: runtime_of(client).failures == 1)
    assert await header_names(client) == {"X-Trace-A"}
    assert runtime_of(client).reloads == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_gateway_policy_reloads_total{result="error"} 1.0' in metrics
    assert 'llama_gateway_policy_reloads_total{result="ok"} 0.0' in metrics
    failure = next(r for r in caplog.records if r.name == "gateway.reload")
    assert failure.problems == [
        "policies[0].colour: unknown key (check the spelling against docs/configuration.md)"
    ]  # type: ignore[attr-defined]


async def test_an_emptied_policy_file_keeps_the_old_policy(reloadable: Any) -> None:
    """An editor that truncates before it writes must not switch every policy off (auth
    among them) for as long as the file reads empty."""
    client, policy = reloadable
    policy.write_text("# being rewritten\n")
    await wait_until(lambda: runtime_of(client).failures == 1)
    assert runtime_of(client).reloads == 0
    assert await header_names(client) == {"X-Trace-A"}


async def test_a_file_still_being_written_is_taken_in_once_it_holds_still(
    reloadable: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, policy = reloadable
    runtime = runtime_of(client)
    read = threading.Event()
    digest = runtime._file_digest

    def watched() -> bytes | None:
        try:
            return digest()
        finally:
            read.set()

    monkeypatch.setattr(runtime, "_file_digest", watched)
    policy.write_text("policies: []\n")  # a slow writer part-way: a document of no policies
    read.clear()
    await asyncio.to_thread(read.wait)  # the watcher has seen it, once
    policy.write_text(VALID_B)
    await wait_until(lambda: runtime.reloads == 1)
    await asyncio.sleep(0.2)
    assert runtime.reloads == 1  # the half-written file was never swapped in
    assert await header_names(client) == {"X-Trace-B"}


async def test_stream_in_flight_finishes_on_the_chain_it_started_with(reloadable: Any) -> None:
    client, _ = reloadable
    old_chain = runtime_of(client).chain
    body = {**CHAT, "stream": True, "fake": {"chunks": 5, "delay": 0.1}}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.headers["X-Trace-A"]
    assert await runtime_of(client).reload("test")
    assert old_chain.active == 1
    assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    await wait_until(lambda: old_chain.active == 0)


async def test_reload_under_load_fails_no_request(reloadable: Any) -> None:
    client, policy = reloadable
    stop = asyncio.Event()

    async def flip() -> None:
        while not stop.is_set():
            for text in (VALID_B, INVALID, VALID_A, "policies: [", INVALID):
                policy.write_text(text)
                await runtime_of(client).reload("test")
                await asyncio.sleep(0.005)

    async def load() -> list[int]:
        statuses = []
        for _ in range(60):
            stream = len(statuses) % 2 == 0
            resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            await resp.read()
            statuses.append(resp.status)
        return statuses

    flipper = asyncio.create_task(flip())
    results = await asyncio.gather(*(load() for _ in range(4)))
    stop.set()
    await flipper
    assert {s for r in results for s in r} == {200}
    assert runtime_of(client).reloads > 5
    assert runtime_of(client).failures > 5
