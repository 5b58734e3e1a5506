"""The Redis Cluster client on real clusters of the test's own: slots as Redis computes
them, each command on the node serving its key, scripts on every node, redirections
followed while a slot moves, and a dead or stuck node failing its own keys only."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.redis_client import ReplyError, Unreachable
from gateway.redis_cluster import ClusterClient, cluster_seeds, key_slot
from gateway.storage import StorageConfig
from policies.rate_limit.store import ADMIT
from tests.support.redis_cluster import Cluster, Node

KEYS = st.text(st.sampled_from("ab{}:é"), max_size=10) | st.binary(max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS)
def test_slots_are_the_clusters_own(shared_cluster: Cluster, key: str | bytes) -> None:
    node = shared_cluster.nodes[0]
    assert key_slot(key) == node.command("CLUSTER", "KEYSLOT", key)


@pytest.fixture
async def client(shared_cluster: Cluster) -> AsyncIterator[ClusterClient]:
    made = ClusterClient(shared_cluster.url)
    yield made
    await made.close()


def spread(cluster: Cluster, prefix: str) -> dict[int, str]:
    """A key on each node (by its index in the cluster), each with a tag of its own."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < len(cluster.nodes):
        key = f"{prefix}:{{t{n}}}:k"
        keys.setdefault(cluster.nodes.index(cluster.owner(key)), key)
        n += 1
    return keys


async def test_each_command_goes_to_the_node_serving_its_key(
    shared_cluster: Cluster, client: ClusterClient
) -> None:
    prefix = uuid.uuid4().hex
    keys = [f"{prefix}:{{user{n}}}:requests" for n in range(40)]
    await asyncio.gather(*(client.call("SET", key, key) for key in keys))
    for key in keys:  # redis-py on one node follows no redirection: the key must be there
        assert shared_cluster.owner(key).command("GET", key) == key.encode()
    assert await client.call("GET", keys[0]) == keys[0].encode()
    assert client.moved == client.asked == 0
    assert {client.node(("GET", k)) for k in keys} == {n.address for n in shared_cluster.nodes}


async def test_scripts_are_loaded_on_every_primary(
    shared_cluster: Cluster, client: ClusterClient
) -> None:
    for node in shared_cluster.nodes:
        node.command("SCRIPT", "FLUSH")
    assert await client.call("SCRIPT", "LOAD", ADMIT.text) == ADMIT.sha.encode()
    for node in shared_cluster.nodes:
        assert node.command("SCRIPT", "EXISTS", ADMIT.sha) == [1]
    key = f"{uuid.uuid4().hex}:{{caller}}:requests"
    args = ("m", 1000, "b", 10, 1, 60_000)
    reply = await client.call("EVALSHA", ADMIT.sha, 1, key, *args)
    assert reply[:3] == [1, 0, 0]  # admitted, by the node serving the key
    assert shared_cluster.owner(key).command("EXISTS", key) == 1


async def test_a_moving_slot_is_followed_by_ask_then_by_moved(own_cluster: Cluster) -> None:
    client = ClusterClient(own_cluster.url)
    key = "moving:{caller}:requests"
    source = own_cluster.owner(key)
    target = next(n for n in own_cluster.nodes if n is not source)
    slot = own_cluster.slot(key)
    try:
        assert await client.call("INCR", key) == 1
        own_cluster.begin_migration(slot, source, target)
        assert await client.call("INCR", key) == 2  # still on the source: served there
        assert own_cluster.move_keys(slot, source, target) == 1
        assert await client.call("INCR", key) == 3  # gone: the source says ASK
        assert (client.asked, client.moved) == (1, 0)
        own_cluster.end_migration(slot, target)
        assert await client.call("INCR", key) == 4  # the slot is the target's: MOVED
        assert await client.call("INCR", key) == 5  # the client knows it now
        assert (client.asked, client.moved) == (1, 1)
        assert client.node(("INCR", key)) == target.address
        assert target.command("GET", key) == b"5"
    finally:
        await client.close()


async def test_a_script_whose_keys_are_split_by_a_migration_waits_for_them(
    own_cluster: Cluster,
) -> None:
    client = ClusterClient(own_cluster.url)
    first, second = "split:{caller}:requests", "split:{caller}:tokens"
    source = own_cluster.owner(first)
    target = next(n for n in own_cluster.nodes if n is not source)
    slot = own_cluster.slot(first)
    script = "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])"
    try:
        await client.call("EVAL", script, 2, first, second)  # both exist now
        own_cluster.begin_migration(slot, source, target)
        source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", first)
        call = asyncio.ensure_future(client.call("EVAL", script, 2, first, second))
        async with asyncio.timeout(10):
            while client.tried_again == 0:  # noqa: ASYNC110 - TRYAGAIN from the source
                await asyncio.sleep(0.005)
        assert not call.done()
        await asyncio.to_thread(own_cluster.move_keys, slot, source, target)
        assert await call == 4
        assert client.asked >= 1
    finally:
        await client.close()


async def test_a_dead_node_fails_its_own_keys_only(own_cluster: Cluster) -> None:
    client = ClusterClient(own_cluster.url)
    keys = spread(own_cluster, "dead")
    victim = own_cluster.nodes[0]
    try:
        for key in keys.values():
            await client.call("SET", key, "v")
        refreshes = client.refreshes
        victim.kill()
        with pytest.raises(Unreachable):
            await client.call("GET", keys[0])
        for index in (1, 2):
            assert await client.call("GET", keys[index]) == b"v"
        assert await client.call("PING") == b"PONG"  # the nodes that answer do
        async with asyncio.timeout(10):
            while client.refreshes == refreshes:  # noqa: ASYNC110 - read within a second
                await asyncio.sleep(0.05)
        own_cluster.restart(victim)
        assert await client.call("GET", keys[0]) is None  # back, without its keys
    finally:
        await client.close()


async def test_a_stuck_node_that_times_out_drops_its_own_connection_only(
    own_cluster: Cluster,
) -> None:
    client = ClusterClient(own_cluster.url)
    keys = spread(own_cluster, "stuck")
    victim: Node = own_cluster.nodes[0]
    try:
        for key in keys.values():
            await client.call("SET", key, "v")
        other = client.nodes[own_cluster.nodes[1].address]
        kept = other._conn
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGSTOP)
        try:
            stuck = ("GET", keys[0])
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await client.call(*stuck)
            client.abort(*stuck)  # what a caller whose time ran out does
            assert await client.call("GET", keys[1]) == b"v"
            assert other._conn is kept  # the other nodes' connections stay
        finally:
            victim.proc.send_signal(signal.SIGCONT)
        assert await client.call(*stuck) == b"v"
    finally:
        await client.close()


def test_the_url_names_the_seeds_and_the_credentials() -> None:
    base, seeds = cluster_seeds("redis+cluster://:pw@10.0.0.1:7000,[::1]:7001,redis-2")
    assert base == "redis://:pw@"
    assert seeds == [("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 6379)]
    assert cluster_seeds("rediss+cluster://h:1/0")[0] == "rediss://"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://h:1/3", "database 0 only"),
        ("redis+cluster://h:1,,h:2", "names no node"),
        ("redis+cluster://h:port", "Port could not be cast"),
        ("cluster://h:1", r"redis\+cluster://host:port"),
    ],
)
def test_a_wrong_cluster_url_is_refused_with_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        StorageConfig(redis_url=url)


async def test_a_cluster_no_node_of_which_answers_is_unreachable() -> None:
    client = ClusterClient("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    try:
        with pytest.raises(Unreachable, match="no node of the cluster answers"):
            await client.call("GET", "k")
    finally:
        await client.close()


async def test_an_error_reply_other_than_a_redirection_is_the_callers(
    client: ClusterClient,
) -> None:
    key = f"{uuid.uuid4().hex}:{{w}}"
    await client.call("SET", key, "text")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await client.call("HGET", key, "field")
