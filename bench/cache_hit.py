"""Hit against miss: a chat answer from a real llama-server through the gateway with the
cache policy, asked once (a miss: generated) and then again (hits: from the store).

    python -m bench.cache_hit [--requests 20] [--tokens 64] [--redis redis://127.0.0.1:6379/0]

Starts `llama-gateway local`'s llama-servers (needs the `local` extra) and a gateway in
this process; prints the miss's latency and the hits' median and 99th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.config import parse_config
from gateway.local import CHAT_MODEL, free_port, llama_servers


def config(chat_url: str, redis_url: str | None) -> Any:
    cache: dict[str, Any] = {"type": "cache", "key_prefix": f"bench:cache:{uuid.uuid4().hex[:8]}"}
    return parse_config(
        {
            "models": {CHAT_MODEL: {"upstreams": [chat_url]}},
            "storage": {"redis_url": redis_url},
            "upstream": {"health_interval_seconds": 0.2},
            "logging": {"access_log": False},
            "policies": [{"type": "request_id"}, cache],
        }
    )


async def timed(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.post(url, json=body) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.headers.get("X-Cache", "")


async def run(chat_url: str, args: argparse.Namespace) -> None:
    runner = web.AppRunner(create_app(config(chat_url, args.redis)), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": f"Tell a story ({uuid.uuid4().hex[:6]})."}],
        "temperature": 0,
        "max_tokens": args.tokens,
    }
    try:
        async with aiohttp.ClientSession() as session:
            while (await timed(session, url, body))[1] == "BYPASS":  # until a probe read /props
                await asyncio.sleep(0.2)
                body["messages"][0]["content"] += "."
            body["messages"][0]["content"] += "!"
            miss, result = await timed(session, url, body)
            await asyncio.sleep(0.2)  # storing is completion work, after the answer
            hits = [await timed(session, url, body) for _ in range(args.requests)]
    finally:
        await runner.cleanup()
    seconds = sorted(t for t, _ in hits)
    where = args.redis or "in process"
    print(f"store: {where}; answer of {args.tokens} tokens at most")
    print(f"miss ({result}): {miss * 1000:9.1f} ms")
    print(
        f"hits ({len(hits)}, {sum(r == 'HIT' for _, r in hits)} HIT): p50 "
        f"{seconds[len(seconds) // 2] * 1000:.2f} ms, p99 "
        f"{seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000:.2f} ms"
    )
    print(f"miss / hit p50: {miss / seconds[len(seconds) // 2]:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--redis", default=None, help="a Redis URL (default: in process)")
    args = parser.parse_args()
    with llama_servers() as urls:
        asyncio.run(run(urls[CHAT_MODEL], args))


if __name__ == "__main__":
    main()
