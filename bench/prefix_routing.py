"""Prefix-cache-aware routing against two real llama-servers (the model of `llama-gateway
local`, 2 slots and 1 CPU thread each), behind one or two gateway replicas.

    python -m bench.prefix_routing [--workloads a,c] [--replicas 1,2]
        [--strategies least_in_flight,prefix] [--conversations 12] [--think 3]
        [--requests 24] [--seed 1] [--set upstream.prefix.imbalance_requests=2]

Workloads: (a) multi-turn: `--conversations` conversations, each with its own system prompt
of about 800 to 1,500 tokens, 4 to 6 turns, interleaved (each thinks `--think` seconds,
jittered, between turns); (b) one shared system prompt of about 1,000 tokens, different
questions; (c) no shared prefix: distinct prompts of 300 to 800 tokens. (b) and (c) send
`--requests` single turns from 4 clients. Each request goes to a gateway replica drawn at
random (with two, the turns of a conversation reach both). Both llama-servers restart
before every run, so each starts cold. Prints per strategy: time to first token p50/p95,
prompt tokens served from cache (`timings.cache_n / (cache_n + prompt_n)` of each stream's
last event), overall and for follow-up turns, wall time, and the prompt tokens each
llama-server evaluated (its own `/metrics`); then prefix against least_in_flight.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import yaml

from bench.overload import percentile, serving
from gateway.config import parse_config
from gateway.local import CHAT_MODEL, NO_AMX, free_port, model_file, server_args, wait_healthy

WORDS = [
    "river",
    "stone",
    "lantern",
    "harbor",
    "meadow",
    "copper",
    "signal",
    "orchard",
    "winter",
    "ledger",
    "canvas",
    "engine",
    "garden",
    "thunder",
    "velvet",
    "compass",
    "marble",
    "beacon",
    "willow",
    "quarry",
    "saddle",
    "timber",
    "crystal",
    "anchor",
    "falcon",
    "prairie",
    "cobalt",
    "summit",
    "pillar",
    "ember",
    "glacier",
    "tunnel",
    "violin",
    "cedar",
    "harvest",
]


@dataclass
class Turn:
    ttft: float | None = None
    cached: int = 0
    evaluated: int = 0
    follow_up: bool = False


def text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of sentences from WORDS (a word and its space: ~1.3 tokens)."""
    words = [rng.choice(WORDS) for _ in range(int(tokens / 1.3))]
    return " ".join(w + ("." if i % 12 == 11 else "") for i, w in enumerate(words))


def start_servers() -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    for _ in range(2):
        port = free_port()
        args = server_args(model_file(), port, embeddings=False, alias=CHAT_MODEL, threads=1)
        at = args.index("-c")
        args[at : at + 4] = ["-c", "8192", "-np", "2"]  # 4,096 tokens per slot
        proc = subprocess.Popen(
            [*args, *NO_AMX], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    for proc, url in zip(procs, urls, strict=True):
        wait_healthy(url, proc)
    return procs, urls


def gateway_config(urls: list[str], routing: str, redis: str | None, sets: list[str]) -> Any:
    raw: dict[str, Any] = {
        "models": {CHAT_MODEL: {"upstreams": urls, "routing": routing}},
        "upstream": {"first_byte_timeout": 600, "idle_timeout": 600},
        "logging": {"access_log": False, "level": "WARNING"},
        "policies": [],
    }
    if redis is not None:  # replicas share the slots' bound through Redis
        raw["storage"] = {"redis_url": redis}
        raw["upstream"]["admission"] = {"key_prefix": f"bench-{uuid.uuid4().hex}:"}
    for item in sets:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return parse_config(raw)


async def send(session: aiohttp.ClientSession, url: str, messages: list[Any]) -> tuple[Turn, str]:
    body = {"model": CHAT_MODEL, "messages": messages, "max_tokens": 16, "stream": True}
    body["temperature"] = 0
    turn, answer, sent = Turn(), [], time.perf_counter()
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    turn.ttft = turn.ttft or time.perf_counter() - sent
                    answer.append(content)
            timings = event.get("timings")
            if timings:
                turn.cached, turn.evaluated = timings["cache_n"], timings["prompt_n"]
    return turn, "".join(answer)


async def conversation(
    session: aiohttp.ClientSession, urls: list[str], rng: random.Random, args: Any
) -> list[Turn]:
    messages: list[Any] = [{"role": "system", "content": text(rng, rng.randint(800, 1500))}]
    turns = []
    await asyncio.sleep(rng.uniform(0, args.think * 2))
    for number in range(rng.randint(4, 6)):
        messages.append({"role": "user", "content": f"Question {number}: {text(rng, 30)}?"})
        turn, answer = await send(session, rng.choice(urls), messages)
        turn.follow_up = number > 0
        turns.append(turn)
        messages.append({"role": "assistant", "content": answer})
        await asyncio.sleep(args.think * rng.uniform(0.5, 1.5))
    return turns


async def singles(
    session: aiohttp.ClientSession, urls: list[str], rng: random.Random, args: Any, shared: bool
) -> list[Turn]:
    system = text(rng, 1000)
    prompts = [
        [{"role": "system", "content": system}, {"role": "user", "content": text(rng, 40)}]
        if shared
        else [{"role": "user", "content": text(rng, rng.randint(300, 800))}]
        for _ in range(args.requests)
    ]
    turns: list[Turn] = []

    async def client() -> None:
        while prompts:
            turns.append((await send(session, rng.choice(urls), prompts.pop()))[0])

    await asyncio.gather(*(client() for _ in range(4)))
    return turns


async def evaluated(session: aiohttp.ClientSession, urls: list[str]) -> list[int]:
    """Prompt tokens each llama-server evaluated (its `/metrics`)."""
    found = []
    for url in urls:
        async with session.get(url + "/metrics") as resp:
            lines = (await resp.text()).splitlines()
        total = [ln for ln in lines if ln.startswith("llamacpp:prompt_tokens_total")]
        found.append(int(float(total[0].split()[-1])) if total else -1)
    return found


async def measure(workload: str, replicas: int, routing: str, args: Any) -> dict[str, Any]:
    procs, upstreams = start_servers()
    redis = "redis://127.0.0.1:6379/0" if replicas > 1 else None
    runners = []
    try:
        urls = []
        for _ in range(replicas):
            runner, url, _ = await serving(gateway_config(upstreams, routing, redis, args.set))
            runners.append(runner)
            urls.append(url)
        rng = random.Random(args.seed)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.perf_counter()
            if workload == "a":
                count = args.conversations
                seeds = [rng.random() for _ in range(count)]
                jobs = [conversation(session, urls, random.Random(s), args) for s in seeds]
                turns = [t for c in await asyncio.gather(*jobs) for t in c]
            else:
                turns = await singles(session, urls, rng, args, shared=workload == "b")
            wall = time.perf_counter() - started
            per_server = await evaluated(session, upstreams)
    finally:
        for runner in runners:
            await runner.cleanup()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    return summary(turns, wall, per_server)


def share(turns: list[Turn]) -> float:
    cached = sum(t.cached for t in turns)
    return 100 * cached / max(1, cached + sum(t.evaluated for t in turns))


def summary(turns: list[Turn], wall: float, per_server: list[int]) -> dict[str, Any]:
    ttfts = [t.ttft for t in turns if t.ttft is not None]
    return {
        "requests": len(turns),
        "p50": percentile(ttfts, 0.5),
        "p95": percentile(ttfts, 0.95),
        "cached": share(turns),
        "follow_ups": share([t for t in turns if t.follow_up]),
        "wall": wall,
        "servers": per_server,
    }


def show(workload: str, replicas: int, results: dict[str, dict[str, Any]]) -> None:
    print(f"workload ({workload}), {replicas} gateway replica(s):")
    for routing, r in results.items():
        print(
            f"  {routing:<16} {r['requests']:3d} requests  TTFT p50 {r['p50']:6.2f} s  "
            f"p95 {r['p95']:6.2f} s  cached {r['cached']:5.1f}%  follow-ups "
            f"{r['follow_ups']:5.1f}%  wall {r['wall']:6.1f} s  evaluated per server "
            f"{r['servers']}"
        )
    if {"prefix", "least_in_flight"} <= results.keys():
        p, lif = results["prefix"], results["least_in_flight"]
        print(
            f"  prefix vs least_in_flight: TTFT p50 {lif['p50'] / p['p50']:.2f}x lower, "
            f"wall {p['wall'] / lif['wall']:.3f}x"
        )


async def main(args: Any) -> None:
    began = time.perf_counter()
    for workload in args.workloads.split(","):
        for replicas in (int(r) for r in args.replicas.split(",")):
            results = {}
            for routing in args.strategies.split(","):
                results[routing] = await measure(workload, replicas, routing, args)
            show(workload, replicas, results)
    print(f"elapsed {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="a,b,c")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--strategies", default="least_in_flight,prefix")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--think", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    asyncio.run(main(parser.parse_args()))
