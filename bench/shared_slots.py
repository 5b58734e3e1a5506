"""Two gateway replicas in front of one upstream: how far over its slots do they go?

    python -m bench.shared_slots [--seconds 10] [--clients 32] [--delay 0.02]

Runs the fake llama-server in this process (4 slots; it counts the requests it answers at
once) and two `llama-gateway serve` processes in front of it, sharing the local Redis;
`--clients` closed-loop clients send chat requests, alternating between the replicas, for
`--seconds`, once with `upstream.admission.across_replicas` on and once off. Prints the
most requests in flight at the upstream, the share of time it had more than its slots,
and the requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.run import Server, start, stop
from gateway.local import free_port
from tests.support.fake_llama import FakeLlama

SLOTS = 4  # what the fake's /props reports
REDIS = "redis://127.0.0.1:6379/0"


def replica_config(directory: Path, shared: bool) -> Path:
    path = directory / f"replica-{shared}.yaml"
    path.write_text(
        f"storage: {{redis_url: '{REDIS}', data_dir: '{directory}'}}\n"
        "upstream:\n"
        "  health_interval_seconds: 0.2\n"
        f"  admission: {{across_replicas: {str(shared).lower()},"
        f" key_prefix: 'bench:{uuid.uuid4().hex[:8]}:'}}\n"
        "logging: {level: WARNING, access_log: false}\n"
    )
    return path


def replicas(config: Path, upstream: str, logdir: Path) -> list[Server]:
    started = []
    for n in range(2):
        port = free_port()
        cmd = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
        cmd += ["--upstream", f"fake={upstream}", "--config", str(config)]
        started.append(start(f"replica{n}", cmd, f"http://127.0.0.1:{port}", "/ready", logdir))
    return started


async def load(urls: list[str], clients: int, seconds: float, delay: float) -> int:
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": "hi"}],
        "fake": {"first_byte_delay": delay},
    }
    done = 0
    deadline = time.perf_counter() + seconds
    targets = itertools.cycle(urls)

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                done += resp.status == 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session, next(targets)) for _ in range(clients)))
    return done


async def over_share(fake: FakeLlama, stop_at: float) -> float:
    """The share of 1 ms samples in which the fake had more than its slots in flight."""
    over = samples = 0
    while time.perf_counter() < stop_at:
        samples += 1
        over += fake.in_flight > SLOTS
        await asyncio.sleep(0.001)
    return over / max(1, samples)


async def measure(args: argparse.Namespace, shared: bool, directory: Path) -> None:
    fake = FakeLlama()
    fake.record = False
    runner = web.AppRunner(fake.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = replica_config(directory, shared)
    # Started from a thread: the fake answers their probes on this loop meanwhile.
    started = await asyncio.to_thread(replicas, config, f"http://127.0.0.1:{port}", directory)
    try:
        urls = [server.url for server in started]
        await load(urls, args.clients, 1.0, args.delay)  # warm: slots read, connections open
        fake.max_in_flight = 0
        sampler = over_share(fake, time.perf_counter() + args.seconds)
        done, over = await asyncio.gather(
            load(urls, args.clients, args.seconds, args.delay), sampler
        )
    finally:
        await asyncio.to_thread(lambda: [stop(server) for server in started])
        await runner.cleanup()
    name = "shared (leases in Redis)" if shared else "per replica"
    ceiling = SLOTS * (1 if shared else 2) / args.delay
    print(
        f"  {name:<25} most in flight {fake.max_in_flight:3d} (slots {SLOTS})  "
        f"over the slots {100 * over:5.1f}% of the time  {done / args.seconds:5.0f} req/s "
        f"(of at most {ceiling:.0f} in flight x answer time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.02, help="upstream answer time (s)")
    args = parser.parse_args()
    print(f"two replicas, {args.clients} clients, answers of {args.delay * 1000:g} ms:")
    with tempfile.TemporaryDirectory() as directory:
        for shared in (True, False):
            asyncio.run(measure(args, shared, Path(directory)))


if __name__ == "__main__":
    main()
