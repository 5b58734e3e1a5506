"""Overload and failover against real llama-servers (the model of `llama-gateway local`).

    python -m bench.overload [--part queue|failover|all] [--seconds 30] [--overload 3]

queue: one llama-server (4 slots, 2 threads); its capacity is measured first (4 streams
at once), then streams arrive at random (Poisson) at `--overload` times that rate for
`--seconds`, a `--premium-share` of them premium (priority 10, waits up to 30 s) and the
rest free (priority 0, waits up to 5 s), through a gateway with its admission queue and
then without it (llama-server's own FIFO). Prints, per tier: time to first token p50/p95
of the answered streams, and the share answered 503 server_busy.

failover: two llama-servers (4 slots, 1 thread each) behind one gateway, six streams at
a time; halfway through one llama-server is killed (SIGKILL). Prints the requests that
failed among those that had not started (no byte yet: the goal is none) and among those
cut mid-stream, and how long after the kill it was out of rotation (marked down, by a
refused connection or its probe) and its circuit open; once with the health probe every
second, once every 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import STATE, create_app
from gateway.circuit import OPEN
from gateway.config import parse_config
from gateway.local import CHAT_MODEL, NO_AMX, free_port, model_file, server_args, wait_healthy
from gateway.upstreams import DOWN

PROMPT = "Write a short story about a lighthouse keeper and a storm."
KEYS = {"free": "bench-free-key-0123456789abcdef", "premium": "bench-premium-key-0123456789ab"}


@dataclass
class Result:
    tier: str
    status: int = 0
    ttft: float | None = None  # seconds to the first content event
    sent: float = 0.0  # when the request left (perf_counter)
    first: float | None = None  # when its first byte came
    broken: bool = False  # an error event, or the stream cut before [DONE]


def gateway_config(urls: list[str], queue: bool, health: float) -> Any:
    keys = [
        {"hash": "sha256:" + hashlib.sha256(k.encode()).hexdigest(), "owner": t, "tier": t}
        for t, k in KEYS.items()
    ]
    return parse_config(
        {
            "models": {CHAT_MODEL: {"upstreams": urls}},
            "upstream": {
                "health_interval_seconds": health,
                "admission": {"enabled": queue},
                "first_byte_timeout": 600,
                "idle_timeout": 600,
            },
            "tiers": {
                "free": {"priority": 0, "max_queue_seconds": 5},
                "premium": {"priority": 10, "max_queue_seconds": 30},
            },
            "logging": {"access_log": False, "level": "WARNING"},
            "policies": [{"type": "auth", "api_keys": False, "static_keys": keys}],
        }
    )


async def stream(session: aiohttp.ClientSession, url: str, tier: str, tokens: int) -> Result:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": f"{PROMPT} ({random.random():.6f})"}],
        "max_tokens": tokens,
        "stream": True,
    }
    result = Result(tier, sent=time.perf_counter())
    headers = {"Authorization": f"Bearer {KEYS[tier]}"}
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            result.status = resp.status
            done = False
            async for line in resp.content:
                if result.first is None:
                    result.first = time.perf_counter()
                if line.startswith(b"data: {") and b'"content"' in line and result.ttft is None:
                    result.ttft = time.perf_counter() - result.sent
                if b'"error"' in line:
                    result.broken = True
                done = done or line.startswith(b"data: [DONE]")
            result.broken = result.broken or (resp.status == 200 and not done)
    except aiohttp.ClientError:
        result.broken = True
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def serving(config: Any) -> tuple[web.AppRunner, str, web.Application]:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/v1/chat/completions", app


async def capacity(session: aiohttp.ClientSession, url: str, tokens: int, seconds: float) -> float:
    """Streams answered per second with 4 at once (the upstream's slots)."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            if (await stream(session, url, "premium", tokens)).status == 200:
                done += 1

    await asyncio.gather(*(worker() for _ in range(4)))
    return done / (time.perf_counter() - started)


async def arrivals(url: str, rate: float, args: argparse.Namespace) -> list[Result]:
    """Poisson arrivals at `rate` per second for `args.seconds`; every answer awaited."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            tier = "premium" if random.random() < args.premium_share else "free"
            tasks.append(asyncio.create_task(stream(session, url, tier, args.tokens)))
            await asyncio.sleep(random.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def report(name: str, results: list[Result]) -> None:
    for tier in ("premium", "free"):
        mine = [r for r in results if r.tier == tier]
        ttfts = [r.ttft for r in mine if r.status == 200 and r.ttft is not None]
        busy = sum(r.status == 503 for r in mine)
        print(
            f"  {name:<9} {tier:<8} requests {len(mine):4d}  answered {len(ttfts):4d}  "
            f"503 {100 * busy / max(1, len(mine)):5.1f}%  "
            f"TTFT p50 {percentile(ttfts, 0.5):6.2f} s  p95 {percentile(ttfts, 0.95):6.2f} s"
        )


def start_server(port: int, threads: int) -> subprocess.Popen[bytes]:
    command = server_args(model_file(), port, embeddings=False, alias=CHAT_MODEL, threads=threads)
    # Without weight repacking, as `llama-gateway local` restarts it where the CPU's AMX
    # cannot be used (gateway.local.NO_AMX).
    proc = subprocess.Popen(
        [*command, *NO_AMX], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


async def queue_part(args: argparse.Namespace) -> None:
    port = free_port()
    proc = start_server(port, threads=2)
    try:
        upstream = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            rate = await capacity(session, upstream + "/v1/chat/completions", args.tokens, 15)
        print(f"queue: capacity {rate:.2f} streams/s of {args.tokens} tokens (4 slots)")
        print(
            f"  arrivals {args.overload * rate:.2f}/s for {args.seconds:g} s, "
            f"{100 * args.premium_share:.0f}% premium"
        )
        for name, queue in (("queue", True), ("no queue", False)):
            runner, url, _ = await serving(gateway_config([upstream], queue, 1.0))
            try:
                report(name, await arrivals(url, args.overload * rate, args))
            finally:
                await runner.cleanup()
            await asyncio.sleep(2)  # llama-server finishes what the gateway dropped
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def failover_part(args: argparse.Namespace) -> None:
    for health in (1.0, 30.0):
        print(f"failover, health probe every {health:g} s:")
        await failover_run(args, health)


async def failover_run(args: argparse.Namespace, health: float) -> None:
    ports = [free_port(), free_port()]
    procs = [start_server(port, threads=1) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    runner, url, app = await serving(gateway_config(urls, True, health))
    victim = app[STATE].pool.by_model[CHAT_MODEL][1]
    killed_at: list[float] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            deadline = time.perf_counter() + args.seconds
            results: list[Result] = []

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    results.append(await stream(session, url, "premium", args.tokens))

            async def kill() -> tuple[float | None, float | None]:
                await asyncio.sleep(args.seconds / 2)
                procs[1].kill()
                killed_at.append(time.perf_counter())
                return await watch(victim, killed_at[0])

            watched = asyncio.create_task(kill())
            await asyncio.gather(*(worker() for _ in range(6)))
            opened, down = await watched
    finally:
        await runner.cleanup()
        for proc in procs:
            proc.kill()
            proc.wait()
    failover_report(results, killed_at[0], opened, down)


async def watch(victim: Any, since: float) -> tuple[float | None, float | None]:
    """Seconds from `since` until the victim's circuit opened and until it was marked down."""
    opened = down = None
    while opened is None or down is None:
        now = time.perf_counter() - since
        if opened is None and victim.circuit.state == OPEN:
            opened = now
        if down is None and victim.state == DOWN:
            down = now
        if now > 30:
            break
        await asyncio.sleep(0.005)
    return opened, down


def failover_report(
    results: list[Result], killed: float, opened: float | None, down: float | None
) -> None:
    failed = [r for r in results if r.status != 200 or r.broken]
    around = [r for r in results if r.sent < killed]
    unstarted = [r for r in failed if r.first is None or r.status != 200]
    cut = [r for r in failed if r not in unstarted]
    print(f"  {len(results)} streams, {len(around)} sent before the kill")
    print(f"  failed before any byte (goal 0): {len(unstarted)}")
    print(f"  cut mid-stream (in flight on the killed server): {len(cut)}")
    out = "never" if down is None else f"{down:.3f} s"
    circuit = "never (not needed)" if opened is None else f"{opened:.3f} s"
    print(f"  out of rotation (marked down: a refused connect or its probe) after {out}")
    print(f"  circuit open after {circuit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("queue", "failover", "all"), default="all")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--overload", type=float, default=3)
    parser.add_argument("--premium-share", type=float, default=0.25)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    random.seed(7)
    if args.part in ("queue", "all"):
        asyncio.run(queue_part(args))
    if args.part in ("failover", "all"):
        asyncio.run(failover_part(args))


if __name__ == "__main__":
    main()
