"""CPU per call of the Redis clients the gateway could use, on one node and on a cluster.

    python -m bench.redis_clients [--calls 20000] [--concurrency 1,64] [--rounds 3]

Each client runs the rate limit's admission script (`admit.lua`, one token bucket, by
EVALSHA) the way the gateway does: N coroutines (each of `--concurrency`) on one client
(its one connection, or its pool) on uvloop, each calling in a loop, `--calls` calls in
all. Keys carry one hash tag per coroutine, so on the cluster calls go to every node. The
figure is the process's CPU time (`time.process_time`: every thread, a library's native
core included) per call, the median of `--rounds`; wall time per call (in brackets) is
the throughput, and says little on a machine that other work keeps busy.

Single node: a redis-server of its own on a free port; cluster: three primaries of its own
(`tests.support.redis_cluster`). Clients not installed are shown as such: coredis and
valkey-glide are not dependencies of the gateway (`pip install coredis valkey-glide` in a
virtual environment of its own to compare them).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as sync_redis
import uvloop

from gateway.redis_cluster import open_client
from policies.rate_limit.store import ADMIT
from tests.support.rate_limits import private_redis
from tests.support.redis_cluster import redis_cluster

ARGS = ["bench-member", 60_000, "b", 10**12, 1, 60_000]  # never refused


@dataclass(frozen=True)
class Target:
    addresses: list[tuple[str, int]]
    cluster: bool

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.addresses)
        return f"redis+cluster://{hosts}" if self.cluster else f"redis://{hosts}/0"


Call = Callable[[str], Awaitable[Any]]
Close = Callable[[], Awaitable[Any]]


async def gateway_client(target: Target) -> tuple[Call, Close]:
    client = open_client(target.url)

    async def call(key: str) -> Any:
        return await client.call("EVALSHA", ADMIT.sha, 1, key, *ARGS)

    return call, client.close


async def redis_py(target: Target) -> tuple[Call, Close]:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    host, port = target.addresses[0]
    client = RedisCluster(host, port) if target.cluster else aioredis.Redis(host=host, port=port)
    await client.initialize()  # not lazily: 64 first calls at once race to set it up

    async def call(key: str) -> Any:
        return await client.evalsha(ADMIT.sha, 1, key, *ARGS)  # type: ignore[misc]

    return call, client.aclose


async def coredis_client(target: Target) -> tuple[Call, Close]:
    import coredis

    host, port = target.addresses[0]
    client: Any = coredis.RedisCluster(host, port) if target.cluster else coredis.Redis(host, port)
    await client.__aenter__()

    async def call(key: str) -> Any:
        return await client.evalsha(ADMIT.sha, keys=[key], args=ARGS)

    async def close() -> None:
        await client.__aexit__(None, None, None)

    return call, close


async def glide_client(target: Target) -> tuple[Call, Close]:
    import glide

    nodes = [glide.NodeAddress(h, p) for h, p in target.addresses]
    if target.cluster:
        client: Any = await glide.GlideClusterClient.create(
            glide.GlideClusterClientConfiguration(nodes)
        )
    else:
        client = await glide.GlideClient.create(glide.GlideClientConfiguration(nodes))
    script = glide.Script(ADMIT.text)  # invoke_script: EVALSHA, loading it when missing
    args = [str(a) for a in ARGS]

    async def call(key: str) -> Any:
        return await client.invoke_script(script, keys=[key], args=args)

    return call, client.close


CLIENTS = {
    "gateway.redis_client": gateway_client,
    "redis-py (hiredis)": redis_py,
    "coredis": coredis_client,
    "valkey-glide": glide_client,
}


async def measure(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """CPU and wall µs per call of `calls` calls by `concurrency` coroutines."""
    each = calls // concurrency

    async def worker(n: int) -> None:
        key = f"bench:{{c{n}}}:b"
        for _ in range(each):
            await call(key)

    await asyncio.gather(*(worker(n) for n in range(concurrency)))  # warm: connections, slots
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    done = each * concurrency
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def run_one(name: str, target: Target, args: argparse.Namespace) -> list[str]:
    try:
        call, close = await CLIENTS[name](target)
    except ImportError:
        return ["not installed"] * len(args.concurrency)
    cells = []
    try:
        for concurrency in args.concurrency:
            rounds = [await measure(call, args.calls, concurrency) for _ in range(args.rounds)]
            cpu = statistics.median(r[0] for r in rounds)
            wall = statistics.median(r[1] for r in rounds)
            cells.append(f"{cpu:.0f} ({wall:.0f})")
    finally:
        await close()
    return cells


def load_script(addresses: list[tuple[str, int]]) -> None:
    for host, port in addresses:
        with sync_redis.Redis(host=host, port=port) as node:
            node.script_load(ADMIT.text)


def table(args: argparse.Namespace, targets: dict[str, Target]) -> list[list[str]]:
    rows = []
    for name in CLIENTS:
        row = [name]
        for target in targets.values():
            load_script(target.addresses)
            row += uvloop.run(run_one(name, target, args))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument(
        "--concurrency", type=lambda v: [int(n) for n in v.split(",")], default=[1, 64]
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single_dir, cluster_dir = Path(tmp) / "single", Path(tmp) / "cluster"
        single_dir.mkdir()
        cluster_dir.mkdir()
        with private_redis(single_dir) as single, redis_cluster(cluster_dir) as cluster:
            targets = {
                "one node": Target([("127.0.0.1", single.port)], cluster=False),
                "cluster (3 primaries)": Target(
                    [("127.0.0.1", n.port) for n in cluster.nodes], cluster=True
                ),
            }
            rows = table(args, targets)
    print(f"EVALSHA admit.lua, CPU µs per call (wall µs), median of {args.rounds} rounds")
    columns = [f"{t}, {c} at once" for t in targets for c in args.concurrency]
    print("| client | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
