"""`routing: prefix` through the gateway, against fake llama-servers: a conversation's turns
stay on one upstream, across gateway replicas too; the load guard routes by load when that
upstream is busy; least_in_flight, the control, scatters the same turns."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from gateway.prefix import prompt_of, rank
from tests.support.fake_llama import FakeLlama
from tests.support.gateways import gateway_config
from tests.support.metrics import scrape, value
from tests.support.rate_limits import SHARED_REDIS
from tests.support.replicas import DEAD, leases_key, start_fakes
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

SYSTEM = "You are the assistant of conversation {}. " + "Context words. " * 200


async def gateway(
    aiohttp_client: Any,
    urls: list[str],
    routing: str = "prefix",
    sections: dict[str, Any] | None = None,
    **model: Any,
) -> TestClient[Any, Any]:
    models = {"fake": {"upstreams": urls, "routing": routing, **model}}
    config = gateway_config(urls[0], models=models, **(sections or {}))
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    return client


def turns(conversation: int, count: int) -> list[list[dict[str, str]]]:
    """The message lists a client sends in `count` turns of a conversation."""
    history = [{"role": "system", "content": SYSTEM.format(conversation)}]
    sent = []
    for turn in range(count):
        history = [*history, {"role": "user", "content": f"question {turn}"}]
        sent.append(history)
        history = [*history, {"role": "assistant", "content": f"answer {turn}"}]
    return sent


def served_by(fakes: list[FakeLlama], conversation: int) -> list[int]:
    """Which fake (by index) got each turn of `conversation`, in order of arrival."""
    system = SYSTEM.format(conversation)
    seen = []
    for index, fake in enumerate(fakes):
        for body in fake.requests:
            if body["messages"][0]["content"] == system:
                seen.append((len(body["messages"]), index))
    return [index for _, index in sorted(seen)]


async def chat(client: TestClient[Any, Any], messages: list[Any], **extra: Any) -> None:
    resp = await client.post(
        "/v1/chat/completions", json={"model": "fake", "messages": messages, **extra}
    )
    assert resp.status == 200, await resp.text()
    await resp.read()


async def interleaved(clients: list[TestClient[Any, Any]], conversations: int, count: int) -> None:
    """Turn 1 of every conversation, then turn 2 of each, ...; with several clients, each
    conversation's turns go to them in turn."""
    for turn in range(count):
        for conversation in range(conversations):
            client = clients[(conversation + turn) % len(clients)]
            await chat(client, turns(conversation, count)[turn])


@pytest.mark.parametrize("replicas", [1, 2])
async def test_each_conversation_stays_on_one_upstream(
    aiohttp_client: Any, aiohttp_server: Any, replicas: int
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    clients = [await gateway(aiohttp_client, urls) for _ in range(replicas)]
    await interleaved(clients, 7, 4)
    placements = [served_by(fakes, c) for c in range(7)]
    assert all(len(p) == 4 and len(set(p)) == 1 for p in placements), placements
    # Each on the first-ranked upstream of its first block (rendezvous hashing).
    seeds = [u.seed for u in clients[0].app[STATE].pool.by_model["fake"]]
    assert [p[0] for p in placements] == [_top(turns(c, 1)[0], seeds) for c in range(7)]
    samples = await scrape(clients[0])
    routes = {
        r: value(samples, "llama_gateway_prefix_routes_total", model="fake", route=r)
        for r in ("match", "anchor", "load")
    }
    # One replica: the first turns by anchor, the rest matched. Two: this replica saw every
    # other request, and had never seen the first turns of half of the conversations.
    assert routes["load"] == 0
    if replicas == 1:
        assert routes == {"match": 21, "anchor": 7, "load": 0}


async def test_a_turn_new_to_this_replica_follows_its_anchor_to_a_slightly_busier_upstream(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    one, other = [await gateway(aiohttp_client, urls) for _ in range(2)]
    first, second = turns(0, 2)
    await chat(one, first)
    [home] = served_by(fakes, 0)
    # Another conversation whose anchor is the same upstream, held in flight there by the
    # other replica, which has never seen conversation 0.
    seeds = [u.seed for u in other.app[STATE].pool.by_model["fake"]]
    held_turn = next(
        t for c in range(1, 100) if _top(t := turns(c, 1)[0], seeds) == _top(first, seeds)
    )
    held = asyncio.create_task(chat(other, held_turn, fake={"first_byte_delay": 0.5}))
    await eventually(lambda: fakes[home].in_flight)
    await chat(other, second)
    await held
    assert served_by(fakes, 0) == [home, home]


def _top(messages: list[Any], seeds: list[int]) -> int:
    prompt = prompt_of("chat.completions", {"messages": messages})
    assert prompt is not None
    return max(range(len(seeds)), key=lambda i: rank(prompt.anchor, seeds[i]))


async def test_least_in_flight_scatters_the_same_conversations(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await gateway(aiohttp_client, urls, routing="least_in_flight")
    await interleaved([client], 7, 4)
    placements = [served_by(fakes, c) for c in range(7)]
    assert sum(len(set(p)) > 1 for p in placements) >= 4, placements


async def first_turn(
    aiohttp_client: Any, aiohttp_server: Any, slots: int, move_to_idle: bool
) -> tuple[list[FakeLlama], TestClient[Any, Any], list[dict[str, str]], int]:
    """A gateway in front of two fakes of `slots` each, conversation 0's first turn sent:
    the fakes, the gateway, the second turn's messages, the fake that got the first."""
    fakes, urls = await start_fakes(aiohttp_server, 2)
    sections = {"upstream": {"prefix": {"move_to_idle": move_to_idle}}}
    client = await gateway(aiohttp_client, urls, sections=sections, slots=slots)
    first, second = turns(0, 2)
    await chat(client, first)
    [home] = served_by(fakes, 0)
    return fakes, client, second, home


async def routed_by_load(client: TestClient[Any, Any]) -> float:
    samples = await scrape(client)
    return value(samples, "llama_gateway_prefix_routes_total", model="fake", route="load")


@pytest.mark.parametrize("move_to_idle", [True, False])
async def test_a_turn_for_a_full_upstream_while_the_other_is_idle(
    aiohttp_client: Any, aiohttp_server: Any, move_to_idle: bool
) -> None:
    """With `move_to_idle` it takes the idle upstream; by default it waits for its cache."""
    fakes, client, second, home = await first_turn(
        aiohttp_client, aiohttp_server, slots=1, move_to_idle=move_to_idle
    )
    # Turn 2 of the same conversation, held in flight on its upstream: that slot is taken.
    held = asyncio.create_task(chat(client, second, fake={"first_byte_delay": 0.5}))
    await eventually(lambda: fakes[home].in_flight)
    await chat(client, second)  # again, while the other upstream is idle
    await held
    # Turn 1 and the held turn 2 at home; the second turn 2 on the other, or at home.
    counts = [len(fakes[home].requests), len(fakes[1 - home].requests)]
    assert counts == ([2, 1] if move_to_idle else [3, 0])
    assert await routed_by_load(client) == int(move_to_idle)


@pytest.mark.parametrize(
    ("home_seconds", "other_seconds", "move_to_idle", "moved"),
    [(0.6, 2.0, True, False), (2.0, 0.3, True, True), (2.0, 0.3, False, False)],
    ids=["waits-for-its-cache", "takes-the-other-once-idle", "waits-though-the-other-is-idle"],
)
async def test_a_turn_queued_for_its_full_upstream_waits_there_unless_another_goes_idle(
    aiohttp_client: Any,
    aiohttp_server: Any,
    home_seconds: float,
    other_seconds: float,
    move_to_idle: bool,
    moved: bool,
) -> None:
    fakes, client, second, home = await first_turn(
        aiohttp_client, aiohttp_server, slots=2, move_to_idle=move_to_idle
    )
    seeds = [u.seed for u in client.app[STATE].pool.by_model["fake"]]
    # Later turns new to this replica go where their anchor points: two held at home, one
    # on the other upstream, which keeps a free slot.
    anchored = [(c, _top(turns(c, 1)[0], seeds)) for c in range(1, 200)]
    at_home = [c for c, top in anchored if top == home]
    holders = [*at_home[:2], next(c for c, top in anchored if top != home)]
    delays = [home_seconds, home_seconds, other_seconds]
    held = [
        asyncio.create_task(chat(client, turns(c, 2)[1], fake={"first_byte_delay": d}))
        for c, d in zip(holders, delays, strict=True)
    ]
    await eventually(lambda: [fakes[home].in_flight, fakes[1 - home].in_flight] == [2, 1])
    await chat(client, second)
    await asyncio.gather(*held)
    assert served_by(fakes, 0) == [home, 1 - home if moved else home]
    assert await routed_by_load(client) == (1 if moved else 0)


async def test_a_new_conversation_queued_on_its_anchor_takes_the_first_slot_freed(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Placed on its anchor by a tie while both upstreams were full, nothing of it is
    cached there: it does not wait for that one."""
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await gateway(aiohttp_client, urls, slots=1)
    seeds = [u.seed for u in client.app[STATE].pool.by_model["fake"]]
    anchored = [(c, _top(turns(c, 1)[0], seeds)) for c in range(200)]
    new, home = anchored[0]
    holders = [next(c for c, top in anchored[1:] if top == i) for i in (home, 1 - home)]
    delays = {home: 2.0, 1 - home: 0.2}
    held = [
        asyncio.create_task(chat(client, turns(c, 1)[0], fake={"first_byte_delay": delays[i]}))
        for c, i in zip(holders, (home, 1 - home), strict=True)
    ]
    await eventually(lambda: [f.in_flight for f in fakes] == [1, 1])
    started = time.monotonic()
    await chat(client, turns(new, 1)[0])
    assert time.monotonic() - started < 1.5  # not after home's holder
    assert served_by(fakes, new) == [1 - home]
    await asyncio.gather(*held)


async def test_a_dead_preferred_upstream_is_failed_over(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 1)
    sections = {"upstream": {"breaker": {"enabled": False}}}
    client = await gateway(aiohttp_client, [DEAD, urls[0]], sections=sections)
    for conversation in range(6):
        for messages in turns(conversation, 2):
            await chat(client, messages)
    assert len(fakes[0].requests) == 12


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/chat/completions", b'{"model":"fake","messages":[{"role":"user","content":%s}]}'),
        ("/v1/completions", b'{"model":"fake","prompt":%s}'),
    ],
)
async def test_a_prompt_nested_1000_deep_is_relayed_not_a_500(
    aiohttp_client: Any, aiohttp_server: Any, path: str, template: bytes
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await gateway(aiohttp_client, urls)
    body = template % (b"[" * 1_000 + b'"hi"' + b"]" * 1_000)
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert sum(len(f.requests) for f in fakes) == 1


async def test_embeddings_and_unroutable_bodies_are_routed_by_load(
    aiohttp_client: Any, aiohttp_server: Any
) -> None:
    fakes, urls = await start_fakes(aiohttp_server, 2)
    client = await gateway(aiohttp_client, urls)
    for _ in range(4):
        resp = await client.post("/v1/embeddings", json={"model": "fake", "input": ["a"]})
        assert resp.status == 200
    assert [len(f.requests) for f in fakes] == [2, 2]
    samples = await scrape(client)
    assert value(samples, "llama_gateway_prefix_routes_total", model="fake", route="anchor") == 0


async def test_a_turn_waiting_for_a_slot_another_replica_leased_is_served_when_redis_goes(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """Leases in Redis (`admission.across_replicas`): a turn waits for the slot of its
    upstream that the other replica holds; Redis cut mid-wait, the replica falls back on
    its own bound and serves the turn there, its cache, at once (not after its wait runs
    out, not elsewhere, not an error); Redis back, leases are taken again."""
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    key_prefix = f"test-prefix-{secrets.token_hex(4)}:"
    # Leases b cannot give back while Redis is cut run out after lease_seconds.
    admission = {"key_prefix": key_prefix, "lease_seconds": 1.0}
    fakes, urls = await start_fakes(aiohttp_server, 2)
    a, b = [
        await gateway(
            aiohttp_client,
            urls,
            slots=1,
            sections={
                "upstream": {"admission": admission},
                "storage": {"redis_url": f"redis://127.0.0.1:{proxy.port}/0", "data_dir": str(d)},
            },
        )
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        first, second, third = turns(0, 3)
        await chat(a, first)
        [home] = served_by(fakes, 0)
        # Replica b holds both upstreams' slots: conversations anchored on each.
        seeds = [u.seed for u in b.app[STATE].pool.by_model["fake"]]
        anchored = [(c, _top(turns(c, 1)[0], seeds)) for c in range(1, 200)]
        holders = [next(c for c, top in anchored if top == index) for index in (home, 1 - home)]
        held = [
            asyncio.create_task(chat(b, turns(c, 1)[0], fake={"first_byte_delay": 3.0}))
            for c in holders
        ]
        await eventually(lambda: [f.in_flight for f in fakes] == [1, 1])
        waiting = asyncio.create_task(chat(a, second))
        await eventually(lambda: len(a.app[STATE].pool.waiting["fake"]) == 1)
        await asyncio.sleep(0.2)  # it waits: b holds the slots
        assert not waiting.done()
        await proxy.close()
        started = time.monotonic()
        await waiting
        assert time.monotonic() - started < 2.0  # before b's holders end
        assert served_by(fakes, 0) == [home, home]
        samples = await scrape(a)
        errors = value(
            samples,
            "llama_gateway_dependency_errors_total",
            dependency="redis",
            action="local_bound",
        )
        assert errors >= 1
        await asyncio.gather(*held)
        await proxy.start()
        running = asyncio.create_task(chat(a, third, fake={"first_byte_delay": 0.5}))
        await eventually(lambda: fakes[home].in_flight == 1)
        assert await store.zcard(leases_key(key_prefix, urls[home])) == 1  # a lease again
        await running
        assert served_by(fakes, 0) == [home, home, home]
    finally:
        await store.aclose()
        await proxy.close()
