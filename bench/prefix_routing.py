"""Prefix-cache-aware routing against two real llama-servers (the model of `llama-gateway
local`, 2 slots and 1 CPU thread each), behind one gateway or two.

    python -m bench.prefix_routing [--workload a|b|c|all] [--gateways 1|2|both]
                                   [--strategies least_in_flight,prefix] [--set KEY=VALUE]

Workloads:
  a  multi-turn: `--conversations` conversations (default 10), each with its own system
     prompt of 800 to 1,500 tokens, 4 to 6 turns each, all running at once (a think time of
     `--think` seconds, at random up to it, between a turn's answer and the next question),
     so that their turns interleave; every answer goes into the next turn's history.
  b  one shared system prompt (about 1,000 tokens): `--clients` clients each ask
     `--questions` different questions, one after another, each a new conversation.
  c  no shared prefix: the same clients, each prompt its own text of 300 to 600 tokens.

With two gateways the requests alternate between them (as a round-robin load balancer
sends them: a conversation's turns land on both), which share the slot bound through the
local Redis (`upstream.admission.across_replicas`).

Per strategy: time to first token p50/p95 (all requests; on (a) also the follow-up turns,
turn 2 onward), the prompt tokens served from llama-server's cache, `cache_n / (cache_n +
prompt_n)` as every answer reported them (its `timings`; on (a) also for the follow-up
turns alone), the answers per second, and the share of prompt tokens each llama-server
evaluated (its own `/metrics`: `llamacpp:prompt_tokens_total`) and was sent (the gateway's
`llama_gateway_upstream_prompt_tokens_total`), the imbalance between them. `--set
upstream.prefix.imbalance_requests=2` (repeatable) changes the gateways' configuration;
`--repeat N` runs each case N times (seeds from `--seed`) and prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import random
import re
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import yaml

from bench.overload import percentile, serving
from gateway.config import parse_config
from gateway.local import CHAT_MODEL, NO_AMX, free_port, model_file, server_args, wait_healthy

KEY = "bench-prefix-key-0123456789abcdef"
# Random prose from a small vocabulary: texts of different seeds share no prefix.
VOCABULARY = (
    "river stone light garden window morning paper engine market silver winter harbor "
    "letter forest mirror travel number question answer summer bridge island coffee "
    "music doctor teacher village mountain yellow purple history science table kitchen "
    "simple careful quiet sudden gentle ancient modern open closed second minute north "
    "south east west under over between before after during without within across around "
    "beyond"
)
WORDS = VOCABULARY.split()


@dataclass
class Answer:
    turn: int  # 0 for a first turn (or a single-turn request)
    status: int = 0
    ttft: float | None = None
    cache_n: int = 0
    prompt_n: int = 0
    text: str = ""


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0
    verbose: bool = False


def text(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        n = min(words, rng.randint(8, 16))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        words -= n
    return " ".join(sentences)


async def ask(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], turn: int, tokens: int
) -> Answer:
    body = {
        "model": CHAT_MODEL,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    answer, sent, parts = Answer(turn), time.perf_counter(), []
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as resp:
        answer.status = resp.status
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    answer.ttft = answer.ttft or time.perf_counter() - sent
                    parts.append(content)
            timings = event.get("timings")
            if isinstance(timings, dict) and "cache_n" in timings:
                answer.cache_n, answer.prompt_n = timings["cache_n"], timings["prompt_n"]
    answer.text = "".join(parts) or "..."
    return answer


async def conversation(
    rng: random.Random, urls: itertools.cycle[str], session: aiohttp.ClientSession, args: Any
) -> list[Answer]:
    await asyncio.sleep(rng.uniform(0, args.think * 2))  # they start at different times
    messages = [{"role": "system", "content": text(rng, rng.randint(620, 1150))}]
    answers = []
    for turn in range(rng.randint(4, 6)):
        messages.append({"role": "user", "content": text(rng, rng.randint(10, 30)) + "?"})
        answer = await ask(session, next(urls), messages, turn, args.tokens)
        answers.append(answer)
        messages.append({"role": "assistant", "content": answer.text})
        await asyncio.sleep(rng.uniform(0, args.think))
    return answers


async def questions(
    rng: random.Random, urls: itertools.cycle[str], session: aiohttp.ClientSession, args: Any
) -> list[Answer]:
    answers = []
    for _ in range(args.questions):
        question = text(rng, rng.randint(10, 30)) + "?"
        if args.workload == "b":
            messages = [{"role": "system", "content": args.shared}]
            messages.append({"role": "user", "content": question})
        else:
            messages = [{"role": "user", "content": text(rng, rng.randint(230, 460)) + question}]
        answers.append(await ask(session, next(urls), messages, 0, args.tokens))
    return answers


def gateway_config(urls: list[str], strategy: str, gateways: int, args: Any) -> Any:
    key = {
        "hash": "sha256:" + hashlib.sha256(KEY.encode()).hexdigest(),
        "owner": "bench",
        "tier": "bench",
    }
    doc: dict[str, Any] = {
        "models": {CHAT_MODEL: {"upstreams": urls, "routing": strategy}},
        "upstream": {
            "health_interval_seconds": 1.0,
            "first_byte_timeout": 600,
            "idle_timeout": 600,
            "admission": {"key_prefix": f"bench-prefix:{uuid.uuid4().hex[:8]}:"},
        },
        "tiers": {"bench": {"max_queue_seconds": 600}},
        "logging": {"access_log": False, "level": "WARNING"},
        "policies": [{"type": "auth", "api_keys": False, "static_keys": [key]}],
    }
    if gateways > 1:
        doc["storage"] = {"redis_url": "redis://127.0.0.1:6379/0"}
    for item in args.set:
        name, _, value = item.partition("=")
        *path, last = name.split(".")
        node = doc
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return parse_config(doc)


async def metric(session: aiohttp.ClientSession, url: str, pattern: str) -> dict[str, float]:
    """Values of the series matching `pattern` (a regex whose group 1 names the series)."""
    async with session.get(url) as resp:
        found: dict[str, float] = {}
        for line in (await resp.text()).splitlines():
            if m := re.match(pattern, line):
                found[m.group(1)] = found.get(m.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
        return found


async def evaluated(session: aiohttp.ClientSession, servers: list[str]) -> list[float]:
    counts = []
    for server in servers:
        found = await metric(session, server + "/metrics", r"(llamacpp:prompt_tokens_total) ")
        counts.append(found.get("llamacpp:prompt_tokens_total", 0.0))
    return counts


async def one_run(strategy: str, gateways: int, args: Any) -> dict[str, float]:
    # Fresh llama-servers for every run: nothing cached by the run before.
    ports = [free_port(), free_port()]
    procs = [start_server(port) for port in ports]
    servers = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        return await measure(servers, strategy, gateways, args)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


async def measure(servers: list[str], strategy: str, gateways: int, args: Any) -> dict[str, float]:
    started = [
        await serving(gateway_config(servers, strategy, gateways, args)) for _ in range(gateways)
    ]
    urls = itertools.cycle([url for _, url, _ in started])
    rng = random.Random(args.seed)
    timeout = aiohttp.ClientTimeout(total=None)
    try:
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            before = await evaluated(session, servers)
            run, clock = Run(verbose=args.verbose), time.perf_counter()
            if args.workload == "a":
                tasks = [
                    conversation(random.Random(rng.random()), urls, session, args)
                    for _ in range(args.conversations)
                ]
            else:
                tasks = [
                    questions(random.Random(rng.random()), urls, session, args)
                    for _ in range(args.clients)
                ]
            for answers in await asyncio.gather(*tasks):
                run.answers += answers
            run.seconds = time.perf_counter() - clock
            after = await evaluated(session, servers)
            sent: dict[str, float] = {}
            routes: dict[str, float] = {}
            for _, url, _ in started:
                metrics = url.replace("/v1/chat/completions", "/metrics")
                for into, pattern in (
                    (sent, r'llama_gateway_upstream_prompt_tokens_total\{.*upstream="([^"]+)"'),
                    (routes, r'llama_gateway_prefix_routes_total\{.*route="([^"]+)"'),
                ):
                    for name, value in (await metric(session, metrics, pattern)).items():
                        into[name] = into.get(name, 0.0) + value
    finally:
        for runner, _, _ in started:
            await runner.cleanup()
    return report(
        strategy,
        gateways,
        run,
        [a - b for a, b in zip(after, before, strict=True)],
        [sent.get(s, 0.0) for s in servers],
        routes,
    )


def share(values: list[float]) -> str:
    total = sum(values) or 1.0
    return "/".join(f"{100 * v / total:.0f}%" for v in values)


def cached(answers: list[Answer]) -> float:
    hit, evaluated = sum(a.cache_n for a in answers), sum(a.prompt_n for a in answers)
    return 100 * hit / max(1, hit + evaluated)


def report(
    strategy: str,
    gateways: int,
    run: Run,
    evaluated: list[float],
    sent: list[float],
    routes: dict[str, float],
) -> dict[str, float]:
    ok = [a for a in run.answers if a.status == 200 and a.ttft is not None]
    ttft = [a.ttft for a in ok if a.ttft is not None]
    later = [a for a in ok if a.turn > 0]
    later_ttft = [a.ttft for a in later if a.ttft is not None]
    line = (
        f"  {strategy:<15} {gateways} gw  answers {len(ok)}/{len(run.answers)}  "
        f"TTFT p50 {percentile(ttft, 0.5):6.2f} s p95 {percentile(ttft, 0.95):6.2f} s  "
        f"cached {cached(ok):5.1f}%"
    )
    if later:
        line += (
            f"  | turns 2+: TTFT p50 {percentile(later_ttft, 0.5):6.2f} s "
            f"p95 {percentile(later_ttft, 0.95):6.2f} s cached {cached(later):5.1f}%"
        )
    print(line, flush=True)
    print(
        f"  {'':<15}       {len(ok) / run.seconds:.3f} answers/s over {run.seconds:.0f} s;"
        f" prompt tokens evaluated {int(sum(evaluated))} ({share(evaluated)}),"
        f" sent {int(sum(sent))} ({share(sent)})"
        + ("; routed by " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(routes.items())))
        * bool(routes)
    )
    figures = {
        "TTFT p50": percentile(ttft, 0.5),
        "p95": percentile(ttft, 0.95),
        "cached %": cached(ok),
        "answers/s": len(ok) / run.seconds,
        "evaluated": sum(evaluated),
    }
    if later:
        figures |= {
            "turns 2+ p50": percentile(later_ttft, 0.5),
            "p95 ": percentile(later_ttft, 0.95),
            "cached % ": cached(later),
        }
    if run.verbose:
        for a in run.answers:
            print(
                f"    turn {a.turn + 1} ttft {a.ttft or 0:6.2f} s"
                f" cache_n {a.cache_n} prompt_n {a.prompt_n}"
            )
    return figures


def start_server(port: int) -> subprocess.Popen[bytes]:
    command = server_args(model_file(), port, embeddings=False, alias=CHAT_MODEL, threads=1)
    # 2 slots of 4,096 tokens each instead of `llama-gateway local`'s 4 of 1,024.
    command[command.index("-c") : command.index("-np") + 2] = ["-c", "8192", "-np", "2"]
    proc = subprocess.Popen(
        [*command, *NO_AMX], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_healthy(f"http://127.0.0.1:{port}", proc)
    return proc


async def main(args: argparse.Namespace) -> None:
    args.shared = text(random.Random(1), 820)
    for workload in ("a", "b", "c") if args.workload == "all" else (args.workload,):
        args.workload = workload
        print(f"workload {workload}:", flush=True)
        for gateways in (1, 2) if args.gateways == "both" else (int(args.gateways),):
            for strategy in args.strategies.split(","):
                runs = []
                for seed in range(args.seed, args.seed + args.repeat):
                    args.seed = seed
                    runs.append(await one_run(strategy, gateways, args))
                args.seed -= args.repeat - 1
                if args.repeat > 1:
                    medians = (f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0])
                    print(
                        f"  {strategy:<15} {gateways} gw  median of {args.repeat}: "
                        + ", ".join(medians),
                        flush=True,
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="all", choices=["a", "b", "c", "all"])
    parser.add_argument("--gateways", default="both", choices=["1", "2", "both"])
    parser.add_argument("--strategies", default="least_in_flight,prefix")
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--think", type=float, default=2.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, seeds from --seed")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--verbose", action="store_true", help="print every answer's timings")
    asyncio.run(main(parser.parse_args()))
