"""The running policy chain and its hot reload (SIGHUP, or the policy file changing).

A reload builds and starts a complete new chain before swapping it in; requests that
started on the old chain finish on it, and it is closed once the last of them is done.
An invalid document leaves the running chain in place, logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from gateway.config import ConfigError
from gateway.metrics import Metrics
from gateway.policy import Chain, PolicyEnv
from gateway.policydoc import PolicyDocument, PolicySource
from gateway.registry import build_chain
from gateway.resources import Resources
from gateway.upstreams import Pool

log = logging.getLogger("gateway.reload")


def build(
    source: PolicySource,
    resources: Resources,
    metrics: Metrics | None = None,
    upstreams: Pool | None = None,
) -> tuple[PolicyDocument, Chain]:
    document = source.load()
    env = PolicyEnv(
        source.config, document.tiers, resources, metrics or Metrics(), upstreams or Pool()
    )
    return document, build_chain(document.policies, env, source.name)


class PolicyRuntime:
    def __init__(
        self,
        source: PolicySource,
        resources: Resources | None = None,
        chain: Chain | None = None,
        metrics: Metrics | None = None,
        upstreams: Pool | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics or Metrics()
        self.resources = resources or Resources()
        self.upstreams = upstreams or Pool.from_config(source.config)
        if chain is None:
            self.document, self.chain = build(source, self.resources, self.metrics, self.upstreams)
        else:  # a chain assembled in code (tests, embedding)
            self.document, self.chain = PolicyDocument(policies=[]), chain
        self.metrics.set_tiers(self.document.tiers)
        self.metrics.variants.configure(self.document.variants)
        self.reloads = 0
        self.failures = 0
        self._digest = self._file_digest()
        self._lock = asyncio.Lock()
        self._retired: set[Chain] = set()
        self._closing: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.chain.start()

    async def close(self) -> None:
        await asyncio.gather(*self._closing)
        for chain in [*self._retired, self.chain]:
            await chain.close()
        await self.resources.close()

    def _file_digest(self) -> bytes | None:
        path = self.source.path
        if path is None:
            return None
        try:
            return hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            return None

    async def reload(self, reason: str) -> bool:
        """Swap in a chain built from the document as it is now; False if it is invalid."""
        async with self._lock:
            self._digest = self._file_digest()
            try:
                document, chain = build(self.source, self.resources, self.metrics, self.upstreams)
                await chain.start()
            except Exception as exc:  # whatever goes wrong, the running chain stays
                self.failures += 1
                self.metrics.policy_reloads.labels("error").inc()
                problems = exc.problems if isinstance(exc, ConfigError) else [repr(exc)]
                log.error(
                    "policy reload failed (%s); the previous policy stays in force",
                    reason,
                    extra={"source": self.source.name, "problems": problems},
                )
                return False
            old, self.chain, self.document = self.chain, chain, document
            self.metrics.set_tiers(document.tiers)
            self.metrics.variants.configure(document.variants)
            self.reloads += 1
            self.metrics.policy_reloads.labels("ok").inc()
            log.info(
                "policy reloaded (%s)",
                reason,
                extra={"source": self.source.name, "policies": [p.name for p in chain.policies]},
            )
            await self.retire(old)
            return True

    def reload_soon(self, reason: str) -> None:
        """Start a reload from synchronous code (a signal handler)."""
        task = asyncio.create_task(self.reload(reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def retire(self, chain: Chain) -> None:
        self._retired.add(chain)
        if chain.active == 0:
            self._retired.discard(chain)
            await chain.close()

    def release(self, chain: Chain) -> None:
        """A request using `chain` is over; a retired chain is closed once idle."""
        chain.active -= 1
        if chain.active == 0 and chain in self._retired:
            self._retired.discard(chain)
            task = asyncio.create_task(chain.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def watch(self, interval: float) -> None:
        """Reload once the watched file's content has changed and then held still for one
        more interval: a file caught half-written is not taken in."""
        seen = self._digest
        while True:
            await asyncio.sleep(interval)
            digest = await asyncio.to_thread(self._file_digest)
            if digest is not None and digest == seen and digest != self._digest:
                await self.reload("file changed")
            seen = digest
