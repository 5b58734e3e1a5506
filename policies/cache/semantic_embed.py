"""Asking the embedding model for a prompt's vector, within a time bound.

The call goes straight to a healthy upstream of the configured embedding model (the pool's
choice, counted in its in-flight requests like any other), not through the gateway's own
chain: it is the cache's work, not a caller's request. Any failure (no healthy upstream, an
error status, a malformed answer, no answer in time) gives no vector, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from gateway.errors import GatewayError
from gateway.upstreams import Pool
from policies.cache.semantic_metrics import (
    FAILED,
    OK,
    TIMEOUT,
    TOO_LONG,
    UNIDENTIFIED,
    SemanticMetrics,
)
from policies.cache.semantic_mirror import Vector
from policies.cache.semantic_settings import SemanticSettings

log = logging.getLogger("policies.cache.semantic")
EMBEDDINGS = "embeddings"  # the endpoint's name in `Upstream.endpoint_urls`


class Embedder:
    def __init__(self, settings: SemanticSettings, pool: Pool, metrics: SemanticMetrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        self.session = aiohttp.ClientSession(timeout=timeout, json_serialize=_dumps)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def embed(self, text: str) -> Vector | None:
        if len(text) > self.settings.max_text_chars:
            self.metrics.embedded(TOO_LONG)
            return None
        try:
            upstream = self.pool.pick(self.settings.model)
        except GatewayError as exc:
            log.warning("no embedding for the semantic cache: %s", exc.message)
            self.metrics.embedded(FAILED)
            return None
        space = upstream.identity
        if space is None:  # vectors are only comparable with those of the same model
            self.metrics.embedded(UNIDENTIFIED)
            return None
        started = time.perf_counter()
        upstream.in_flight += 1
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                values = await self._post(
                    upstream.endpoint_urls[EMBEDDINGS], upstream.api_key, text
                )
        except TimeoutError:
            self.metrics.embedded(TIMEOUT)
            return None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.warning("no embedding for the semantic cache from %s: %s", upstream.url, exc)
            self.metrics.embedded(FAILED)
            return None
        finally:
            upstream.in_flight -= 1
        vector = Vector.of(values, space)
        if vector is None:
            log.warning("the embedding model at %s answered no usable vector", upstream.url)
            self.metrics.embedded(FAILED)
            return None
        self.metrics.embedded(OK, time.perf_counter() - started)
        return vector

    async def _post(self, url: Any, api_key: str | None, text: str) -> Any:
        assert self.session is not None, "start() first"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        body = {"model": self.settings.model, "input": text}
        async with self.session.post(url, json=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise ValueError(f"status {resp.status}: {raw[:200]!r}")
        answer = orjson.loads(raw)  # orjson.JSONDecodeError is a ValueError
        try:
            return answer["data"][0]["embedding"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"no data[0].embedding in the answer ({exc!r})") from exc


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
