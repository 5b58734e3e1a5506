"""The semantic index: in process, shared on a real Redis, bounded, harmless when Redis fails."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import PolicyEnv
from gateway.redis_client import RedisClient
from policies.cache.semantic import SemanticIndex, Vector
from policies.cache.semantic_mirror import Partition
from tests.support.rate_limits import SHARED_REDIS, ReplyGate, drop_keys, private_redis
from tests.support.semantic import replica, sample, semantic_env, semantic_settings, unit


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"test:semantic:{uuid.uuid4().hex[:12]}"
    yield value
    drop_keys(SHARED_REDIS, value)


@pytest.fixture
async def client() -> AsyncIterator[RedisClient]:
    shared = RedisClient(SHARED_REDIS)
    yield shared
    await shared.close()


Start = Callable[..., Awaitable[SemanticIndex]]


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    """Starts indexes (env, Redis client or None, prefix, settings) and closes them after."""
    indexes: list[SemanticIndex] = []

    async def start(
        env: PolicyEnv, redis_client: RedisClient | None, prefix: str, **changes: Any
    ) -> SemanticIndex:
        index = SemanticIndex(semantic_settings(**changes), env, redis_client, prefix)
        await index.start()
        indexes.append(index)
        return index

    yield start
    for index in indexes:
        await index.close()


async def test_a_stored_prompt_is_found_in_its_partition_only(started: Start) -> None:
    index = await started(semantic_env(), None, "p")
    vector = unit(1)
    await index.add("part", vector, "key-1")
    assert await index.nearest("part", vector) == ("key-1", pytest.approx(1.0))
    assert await index.nearest("other", vector) is None
    other_model = Vector(vector.values, "another-identity")
    assert await index.nearest("part", other_model) is None


async def test_a_prompt_below_the_threshold_is_a_miss_and_counted(started: Start) -> None:
    env = semantic_env()
    index = await started(env, None, "p", threshold=0.99)
    await index.add("part", unit(1), "key-1")
    assert await index.nearest("part", unit(2)) is None
    assert sample(env.metrics, "cache_semantic_lookups_total", result="miss") == 1
    assert await index.nearest("part", unit(1)) is not None
    assert sample(env.metrics, "cache_semantic_lookups_total", result="hit") == 1
    assert sample(env.metrics, "cache_semantic_similarity_count", result="hit") == 1


async def test_a_threshold_of_one_matches_the_same_vector(started: Start) -> None:
    index = await started(semantic_env(), None, "p", threshold=1.0)
    for seed in range(50):
        vector = unit(seed, dim=640)
        await index.add(f"part{seed}", vector, "k")
        assert await index.nearest(f"part{seed}", vector) is not None


async def test_the_bound_per_partition_holds_in_process(started: Start) -> None:
    index = await started(semantic_env(), None, "p", max_entries_per_partition=4)
    vectors = [unit(seed) for seed in range(7)]
    for i, vector in enumerate(vectors):
        await index.add("part", vector, f"key-{i}")
    assert index.mirror is not None
    assert len(index.mirror.partitions[next(iter(index.mirror.partitions))].keys) == 4
    found = [await index.nearest("part", v) for v in vectors]
    assert [f[0] if f is not None and f[1] > 0.999 else None for f in found] == [
        None, None, None, "key-3", "key-4", "key-5", "key-6",
    ]  # fmt: skip


async def test_the_mirror_stays_within_its_bytes(started: Start) -> None:
    env = semantic_env()
    index = await started(env, None, "p", mirror_max_bytes=20_000, max_entries_per_partition=8)
    for seed in range(200):
        await index.add(f"part{seed}", unit(seed, dim=64), f"key-{seed}")
        assert index.mirror is not None
        assert index.mirror.nbytes <= 20_000
    assert await index.nearest("part199", unit(199, dim=64)) is not None
    assert await index.nearest("part0", unit(0, dim=64)) is None  # dropped, least recent


async def test_a_reload_keeps_the_in_process_index(started: Start) -> None:
    env = semantic_env()
    first = await started(env, None, "p")
    await first.add("part", unit(1), "key-1")
    second = await started(env, None, "p")
    assert await second.nearest("part", unit(1)) == ("key-1", pytest.approx(1.0))


async def test_replicas_sharing_redis_see_each_others_entries(
    started: Start, client: RedisClient, prefix: str
) -> None:
    env = semantic_env(redis_url=SHARED_REDIS)
    a = await started(env, client, prefix)
    b = await started(replica(env), client, prefix)
    await a.add("part", unit(1), "from-a")
    assert await b.nearest("part", unit(1)) == ("from-a", pytest.approx(1.0))
    await b.add("part", unit(2), "from-b")  # after b has the partition: an incremental read
    await a.add("part", unit(3), "from-a-again")
    assert await b.nearest("part", unit(3)) == ("from-a-again", pytest.approx(1.0))
    assert await a.nearest("part", unit(2)) == ("from-b", pytest.approx(1.0))
    assert b.mirror is not None
    assert b.mirror.entries == 3  # each entry applied once


async def test_the_bound_per_partition_holds_on_redis(
    started: Start, client: RedisClient, prefix: str
) -> None:
    env = semantic_env(redis_url=SHARED_REDIS)
    writer = await started(env, client, prefix, max_entries_per_partition=5)
    reader = await started(replica(env), client, prefix, max_entries_per_partition=5)
    await writer.add("part", unit(0), "key-0")
    assert await reader.nearest("part", unit(0)) is not None
    for seed in range(1, 13):  # more than a partition's worth since the reader's last read
        await writer.add("part", unit(seed), f"key-{seed}")
    store = redis.Redis.from_url(SHARED_REDIS)
    (key,) = store.keys(f"{prefix}:*")
    assert store.xlen(key) == 5
    assert store.ttl(key) > 0
    store.close()
    assert await reader.nearest("part", unit(12)) == ("key-12", pytest.approx(1.0))
    assert reader.mirror is not None
    assert reader.mirror.entries == 5
    found = await reader.nearest("part", unit(7))  # trimmed away with the six before it
    assert found is None or found[0] != "key-7"


async def test_hostile_stream_entries_are_skipped(
    started: Start, client: RedisClient, prefix: str
) -> None:
    env = semantic_env(redis_url=SHARED_REDIS)
    index = await started(env, client, prefix)
    await index.add("part", unit(1), "good")
    store = redis.Redis.from_url(SHARED_REDIS)
    (key,) = store.keys(f"{prefix}:*")
    store.xadd(key, {"v": b"\x00\x01\x02", "k": "short-vector"})
    store.xadd(key, {"v": np.ones(8, "<f4").tobytes(), "k": b"\xff\xfe"})
    store.xadd(key, {"other": "field"})
    store.close()
    assert await index.nearest("part", unit(1)) == ("good", pytest.approx(1.0))


async def test_a_killed_redis_gives_no_hit_and_no_error(started: Start, tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        env = semantic_env(redis_url=server.url)
        own = RedisClient(server.url)
        index = await started(env, own, "p")
        await index.add("part", unit(1), "key-1")
        assert await index.nearest("part", unit(1)) is not None
        server.stop()
        await index.add("part", unit(2), "key-2")
        assert await index.nearest("part", unit(1)) is None
        assert await index.nearest("part", unit(1)) is None  # during the outage: at once
        errors = sample(
            env.metrics, "dependency_errors_total", dependency="redis", action="semantic_skipped"
        )
        assert errors == 3
        assert sample(env.metrics, "cache_semantic_lookups_total", result="unavailable") == 2
        await own.close()


async def test_a_silent_redis_gives_no_hit_within_the_timeout(started: Start, prefix: str) -> None:
    async with ReplyGate() as gate:
        env = semantic_env(redis_url=gate.url)
        own = RedisClient(gate.url)
        index = await started(env, own, prefix, timeout_seconds=0.2)
        await index.add("part", unit(1), "key-1")
        gate.open.clear()  # Redis runs the commands, its replies are held
        assert await index.nearest("part", unit(1)) is None
        assert sample(env.metrics, "cache_semantic_lookups_total", result="unavailable") == 1
        gate.open.set()
        await own.close()


@settings(max_examples=300)
@given(st.lists(st.floats(width=64) | st.integers(), max_size=12))
def test_a_vector_is_unit_length_or_none(values: list[float]) -> None:
    vector = Vector.of(values, "s")
    if vector is not None:
        assert np.isfinite(vector.values).all()
        assert abs(float(np.linalg.norm(vector.values)) - 1.0) < 1e-5


@settings(max_examples=100)
@given(st.integers(1, 9), st.lists(st.integers(0, 50), max_size=40))
def test_a_partition_keeps_its_newest_entries(capacity: int, seeds: list[int]) -> None:
    partition = Partition(capacity, 8)
    for i, seed in enumerate(seeds):
        partition.add(unit(seed).values, f"key-{i}")
    assert sorted(partition.keys) == sorted(f"key-{i}" for i in range(len(seeds))[-capacity:])
