"""Does llama-server answer a temperature-0 request identically every time? Prints how
many distinct answers N identical requests got: one after another (its prompt cache on
and off), all at once (several slots busy together) and pinned to each slot.

    python -m bench.cache_determinism [--requests 8] [--tokens 96]

Starts its own llama-server (`llama-gateway local`'s model, 4 slots); needs the `local`
extra. What it finds is what docs/policies/cache.md says the cache promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
from collections import Counter
from typing import Any

import aiohttp

from gateway.local import NO_AMX, free_port, model_file, server_args, wait_healthy

PROMPTS = [
    "The history of the printing press begins",
    "Here is a list of ten facts about the ocean:\n1.",
    "def fibonacci(n):",
]


async def answer(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url + "/v1/completions", json=body) as resp:
        data = await resp.json()
    return str(data["choices"][0]["text"])


async def trial(
    session: aiohttp.ClientSession, url: str, prompt: str, tokens: int, n: int
) -> dict[str, int]:
    base = {"prompt": prompt, "temperature": 0, "max_tokens": tokens}
    found: dict[str, int] = {}
    for name, extra in (
        ("sequential, prompt cache on", {}),
        ("sequential, prompt cache off", {"cache_prompt": False}),
    ):
        texts = [await answer(session, url, {**base, **extra}) for _ in range(n)]
        found[name] = len(Counter(texts))
    texts = await asyncio.gather(*(answer(session, url, base) for _ in range(n)))
    found["all at once"] = len(Counter(texts))
    pinned = [await answer(session, url, {**base, "id_slot": i % 4}) for i in range(n)]
    found["pinned to slots 0-3"] = len(Counter(pinned))
    mixed = [*texts, *pinned, await answer(session, url, base)]
    found["every answer above together"] = len(Counter(mixed))
    return found


async def probe(url: str, n: int, tokens: int) -> None:
    async with aiohttp.ClientSession() as session:
        for prompt in PROMPTS:
            found = await trial(session, url, prompt, tokens, n)
            print(f"{prompt[:40]!r}:", flush=True)
            for name, distinct in found.items():
                print(f"  {name:30} {distinct} distinct answer(s)", flush=True)


def main(n: int, tokens: int) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [*server_args(model_file(), port, embeddings=False, alias="m"), *NO_AMX]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, proc)
        asyncio.run(probe(url, n, tokens))
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96)
    options = parser.parse_args()
    main(options.requests, options.tokens)
