"""The semantic cache's figures: hit and false-hit rates on a labelled set, and lookup cost.

Embeds every pair of bench/semantic_pairs.jsonl through a real llama-server started with the
gateway's embedding settings (`llama-gateway local`'s gemma3-270m-embed), using the cache's
own `SemanticIndex`, and prints:
- hit rate (pairs labelled `same`) and false-hit rate (hard negatives) for a sweep of
  thresholds, embedding the last user message (the cache's choice) and, for comparison, the
  whole conversation (a system prompt before the same message);
- the rates by kind of pair at the default threshold;
- the embedding call's p50 ms, and the lookup's p50 µs per partition size (16/256/1024
  entries) in process, on Redis, and for a pure-Python loop instead of numpy.

    python bench/semantic_cache.py [--url URL_OF_AN_EMBEDDING_LLAMA_SERVER] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import operator
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import GatewayConfig, ModelConfig
from gateway.local import EMBED_MODEL, free_port, model_file, running_servers, server_args
from gateway.policy import PolicyEnv
from gateway.probe import probe
from gateway.redis_client import RedisClient
from gateway.resources import Resources
from gateway.storage import StorageConfig
from gateway.upstreams import Pool
from policies.cache.semantic import SemanticIndex, SemanticSettings, Vector

PAIRS = Path(__file__).with_name("semantic_pairs.jsonl")
THRESHOLDS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999, 1.0)
SIZES = (16, 256, 1024)
SYSTEM_PROMPTS = (
    "You are a helpful assistant. Answer concisely and accurately.",
    "You are a friendly tutor for high-school students. Explain step by step, use simple "
    "words and give one example.",
    "You are a support agent for an online shop. Be polite, keep answers short, and never "
    "share internal information.",
)


@contextlib.contextmanager
def embedding_server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    port = free_port()
    command = server_args(model_file(), port, embeddings=True, alias=EMBED_MODEL)
    with running_servers({EMBED_MODEL: (f"http://127.0.0.1:{port}", command)}) as urls:
        yield urls[EMBED_MODEL]


async def environment(url: str, redis_url: str | None) -> PolicyEnv:
    config = GatewayConfig(
        models={EMBED_MODEL: ModelConfig(upstreams=[url])},
        storage=StorageConfig(redis_url=redis_url),
    )
    pool = Pool.from_config(config)
    async with aiohttp.ClientSession() as session:
        for upstream in pool.upstreams:
            await probe(session, upstream, 5.0)  # reads what it serves: the vectors' space
    return PolicyEnv(config=config, tiers={}, resources=Resources(), upstreams=pool)


def settings(**changes: Any) -> SemanticSettings:
    return SemanticSettings(model=EMBED_MODEL, timeout_seconds=30, **changes)


async def embed_all(index: SemanticIndex, texts: set[str]) -> tuple[dict[str, Vector], list[float]]:
    vectors: dict[str, Vector] = {}
    seconds: list[float] = []
    for text in sorted(texts):
        started = time.perf_counter()
        vector = await index.embed(text)
        seconds.append(time.perf_counter() - started)
        assert vector is not None, f"no embedding for {text!r}"
        vectors[text] = vector
    return vectors, seconds


async def repeat_noise(index: SemanticIndex, texts: list[str]) -> float:
    """The lowest similarity of one text with itself, embedded four times at once (the
    server's slots batch it differently)."""
    lowest = 1.0
    for text in texts:
        vectors = await asyncio.gather(*(index.embed(text) for _ in range(4)))
        assert all(v is not None for v in vectors), f"no embedding for {text!r}"
        first = vectors[0]
        assert first is not None
        for other in vectors[1:]:
            assert other is not None
            lowest = min(lowest, float(first.values @ other.values))
    return lowest


def conversation(pair_no: int, text: str) -> str:
    return f"system: {SYSTEM_PROMPTS[pair_no % len(SYSTEM_PROMPTS)]}\nuser: {text}"


def rates(pairs: list[dict[str, Any]], sims: list[float], threshold: float) -> tuple[float, float]:
    same = [s for p, s in zip(pairs, sims, strict=True) if p["same"]]
    other = [s for p, s in zip(pairs, sims, strict=True) if not p["same"]]
    hit = sum(s >= threshold for s in same) / len(same)
    false_hit = sum(s >= threshold for s in other) / len(other)
    return hit, false_hit


def report_rates(pairs: list[dict[str, Any]], variants: dict[str, list[float]]) -> None:
    names = list(variants)
    print("threshold  " + "  ".join(f"{n + ': hit / false hit':>38}" for n in names))
    for t in THRESHOLDS:
        cells = []
        for n in names:
            hit, false_hit = rates(pairs, variants[n], t)
            cells.append(f"{hit:>18.1%} / {false_hit:>6.1%}{'':>10}")
        print(f"{t:<9}  " + "  ".join(cells))
    for n in names:
        sims = variants[n]
        negatives = [(s, p) for p, s in zip(pairs, sims, strict=True) if not p["same"]]
        s, p = max(negatives, key=operator.itemgetter(0))
        same = sorted(s for p, s in zip(pairs, sims, strict=True) if p["same"])
        print(
            f"{n}: highest hard negative {s:.6f} ({p['kind']}: {p['a']!r} / {p['b']!r}); "
            f"same pairs p50 {statistics.median(same):.4f}"
        )


def report_kinds(pairs: list[dict[str, Any]], sims: list[float], threshold: float) -> None:
    print(f"\nat the default threshold {threshold} (last user message), by kind:")
    for kind in sorted({p["kind"] for p in pairs}):
        chosen = [(p, s) for p, s in zip(pairs, sims, strict=True) if p["kind"] == kind]
        served = sum(s >= threshold for _, s in chosen)
        label = "hit" if chosen[0][0]["same"] else "false hit"
        values = sorted(s for _, s in chosen)
        print(
            f"  {kind:<11} {len(chosen):>3} pairs  {label:<9} {served / len(chosen):>6.1%}  "
            f"similarity min {values[0]:.4f} p50 {statistics.median(values):.4f} "
            f"max {values[-1]:.4f}"
        )


def random_unit(rng: random.Random, dim: int) -> Vector:
    vector = Vector.of([rng.gauss(0, 1) for _ in range(dim)], "bench")
    assert vector is not None
    return vector


async def lookup_p50(index: SemanticIndex, partition: str, query: Vector, runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await index.nearest(partition, query)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1e6


def python_p50(rows: list[list[float]], query: list[float], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        max(range(len(rows)), key=lambda i: sum(map(operator.mul, rows[i], query)))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1e6


async def lookup_costs(env: PolicyEnv, dim: int, redis_url: str | None) -> None:
    rng = random.Random(7)
    print(f"\nlookup p50 in µs, vectors of {dim} floats (the embedding model's size):")
    print(
        f"{'entries':>8} {'numpy':>10} {'pure Python':>12} {'Redis synced':>13} {'Redis cold':>11}"
    )
    for size in SIZES:
        vectors = [random_unit(rng, dim) for _ in range(size)]
        query = random_unit(rng, dim)
        local = SemanticIndex(settings(max_entries_per_partition=size), env, None, "bench")
        await local.start()
        for i, v in enumerate(vectors):
            await local.add("p", v, f"k{i}")
        numpy_us = await lookup_p50(local, "p", query, 200)
        rows = [v.values.tolist() for v in vectors]
        python_us = python_p50(rows, query.values.tolist(), 5 if size > 16 else 50)
        synced, cold = await redis_costs(env, redis_url, size, vectors, query)
        print(f"{size:>8} {numpy_us:>10.0f} {python_us:>12.0f} {synced:>13} {cold:>11}")
        await local.close()


async def redis_costs(
    env: PolicyEnv, url: str | None, size: int, vectors: list[Vector], query: Vector
) -> tuple[str, str]:
    if url is None:
        return "-", "-"
    client = RedisClient(url)
    prefix = f"bench:semantic:{uuid.uuid4().hex[:8]}"
    writer = SemanticIndex(settings(max_entries_per_partition=size), env, client, prefix)
    await writer.start()
    for i, v in enumerate(vectors):
        await writer.add("p", v, f"k{i}")
    colds = []
    for run in range(20):
        # A replica of its own (its own mirror): the first lookup reads the whole partition.
        fresh = PolicyEnv(config=env.config, tiers={}, resources=Resources())
        reader = SemanticIndex(settings(max_entries_per_partition=size), fresh, client, prefix)
        await reader.start()
        started = time.perf_counter()
        await reader.nearest("p", query)
        colds.append(time.perf_counter() - started)
        if run < 19:
            await reader.close()
    synced = await lookup_p50(reader, "p", query, 200)
    await reader.close()
    await writer.close()
    keys = await client.call("KEYS", f"{prefix}:*")
    if keys:
        await client.call("DEL", *keys)
    await client.close()
    return f"{synced:.0f}", f"{statistics.median(colds) * 1e6:.0f}"


async def main(url: str, redis_url: str | None) -> None:
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    env = await environment(url, None)
    index = SemanticIndex(settings(max_text_chars=100_000), env, None, "bench")
    await index.start()
    texts = {t for p in pairs for t in (p["a"], p["b"])}
    texts |= {conversation(i, t) for i, p in enumerate(pairs) for t in (p["a"], p["b"])}
    vectors, seconds = await embed_all(index, texts)
    longest = sorted({p["a"] for p in pairs}, key=len)[-20:]
    noise = await repeat_noise(index, longest)
    await index.close()

    def sims(render: Any) -> list[float]:
        return [
            float(vectors[render(i, p["a"])].values @ vectors[render(i, p["b"])].values)
            for i, p in enumerate(pairs)
        ]

    last = sims(lambda i, t: t)
    variants = {"last user message": last, "whole conversation": sims(conversation)}
    same = sum(p["same"] for p in pairs)
    print(f"{len(pairs)} pairs: {same} that should hit, {len(pairs) - same} hard negatives\n")
    report_rates(pairs, variants)
    report_kinds(pairs, last, SemanticSettings.model_fields["threshold"].default)
    dim = len(next(iter(vectors.values())).values)
    print(f"\none text embedded 4 times at once (20 longest): lowest similarity {noise:.7f}")
    print(f"embedding call p50 {statistics.median(seconds) * 1e3:.1f} ms over {len(seconds)} texts")
    await lookup_costs(env, dim, redis_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an embedding llama-server already running")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    args = parser.parse_args()
    with embedding_server(args.url) as base:
        asyncio.run(main(base, args.redis or None))
