"""Slots shared by gateway replicas: a lease in Redis per request in flight to an upstream.

Several gateway replicas (and worker processes) in front of the same llama-servers each
count only their own requests; alone, two of them would send twice an upstream's slots.
With `storage.redis_url` and `upstream.admission.across_replicas`, each request in flight
to a bounded upstream holds a lease, a member of that upstream's sorted set in Redis scored
by its expiry (`scripts/lease.lua`): one is taken only while fewer than the upstream's limit
stand. A request that ends hands its lease to the next request waiting in the same replica
(no Redis call), or gives it back. Requests that wait for leases other replicas hold are
served by the queue's poll (`Admission`), every `poll_seconds`.

A lease runs out `lease_seconds` after its last renewal; the leases of running requests
are renewed every third of that, in one call per upstream, so a replica that dies or loses
Redis frees its slots by then. Replicas whose requests wait say so in a second sorted set;
while others wait, a replica keeps no more than its fair share (`share`) for its own queue,
so no replica's queue starves behind another's. Priority holds within a replica: a freed
slot goes to another replica's waiter only by that share.

While Redis fails, a request is admitted on the replica's own bound, without a lease (the
outage is logged once, by `Backend`, and each such request counted in
`dependency_errors{dependency="redis",action="local_bound"}`).

Cost: one script call before a request that finds a free slot, and one `ZREM` after it,
sent without waiting; nothing for a request handed a lease within the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine

from prometheus_client import Counter

from gateway.config import GatewayConfig
from gateway.redis_cluster import open_client
from gateway.redis_scripts import Backend, Client, Script, Unavailable, where
from gateway.resilience import AdmissionConfig
from gateway.resources import Resources
from gateway.upstreams import Upstream

log = logging.getLogger("gateway.leases")

LEASE = Script("gateway", "lease")
TOUCH = Script("gateway", "lease_touch")
_WISH_POLLS = 10  # a replica's wish stands this many polls after it last asked


class Leases:
    def __init__(
        self,
        backend: Backend,
        config: AdmissionConfig,
        errors: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.errors = errors
        self.clock = clock
        self.ttl_ms = str(int(config.lease_seconds * 1000))
        self.wish_seconds = config.poll_seconds * _WISH_POLLS
        self.wish_ms = str(max(1, int(self.wish_seconds * 1000)))
        self.renew_seconds = config.lease_seconds / 3
        self.prefix = config.key_prefix
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._members = itertools.count(1)
        self.held: dict[str, set[str]] = {}  # by upstream URL: the leases this replica holds
        self._others: dict[str, tuple[int, float]] = {}  # by URL: other replicas waiting, when
        self._keys: dict[str, list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def take(self, upstream: Upstream, waiting: bool) -> tuple[bool, str | None]:
        """Whether a request may go to `upstream` now, and its lease: one taken, or None
        while Redis fails (the replica's own bound holds). `waiting`: asked by the queue."""
        member = f"{self.replica}:{next(self._members)}"
        args = [upstream.limit, member, self.ttl_ms, self.replica, self.wish_ms, "take"]
        reply = await self._run(upstream, [*args, "1" if waiting else "0"], member)
        if reply is None:
            return True, None
        taken, others = reply
        self._heard(upstream, others)
        if not taken:
            return False, None
        self.held.setdefault(upstream.url, set()).add(member)
        self._renewing()
        return True, member

    async def peek(self, upstream: Upstream) -> None:
        """Hear how many other replicas wait for `upstream` (and say this one does)."""
        args = [upstream.limit, "", self.ttl_ms, self.replica, self.wish_ms, "peek", "1"]
        reply = await self._run(upstream, args, None)
        if reply is not None:
            self._heard(upstream, reply[1])

    def share(self, upstream: Upstream) -> int:
        """How many of `upstream`'s slots this replica may keep for its own queue: all of
        them unless others waited when last heard, then an even share."""
        others, heard = self._others.get(upstream.url, (0, 0.0))
        if not others or self.clock() - heard > self.wish_seconds:
            return upstream.limit
        return math.ceil(upstream.limit / (others + 1))

    def give_back(self, upstream: Upstream, member: str) -> None:
        self.held.get(upstream.url, set()).discard(member)
        self._spawn(self._remove(upstream.url, member))

    async def _remove(self, url: str, member: str) -> None:
        # Failing, it runs out by itself: no longer renewed.
        with contextlib.suppress(Unavailable):
            await self.backend.command("ZREM", self._key(url)[0], member)

    async def _run(
        self, upstream: Upstream, args: list[object], member: str | None
    ) -> list[int] | None:
        try:
            return await self.backend.run(LEASE, self._key(upstream.url), args)
        except Unavailable as exc:
            self.errors.labels("redis", "local_bound").inc()
            if exc.maybe_ran and member is not None:  # it may stand: not ours to keep
                self._spawn(self._remove(upstream.url, member))
            return None

    def _heard(self, upstream: Upstream, others: int) -> None:
        self._others[upstream.url] = (others, self.clock())

    def _key(self, url: str) -> list[str]:
        keys = self._keys.get(url)
        if keys is None:
            # One hash tag: both keys of a call on the same Redis Cluster node.
            tag = f"{self.prefix}upstream:{{{url}}}"
            keys = self._keys[url] = [f"{tag}:leases", f"{tag}:waiting"]
        return keys

    def _renewing(self) -> None:
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(), name="leases.renew")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            for url, members in list(self.held.items()):
                if members:
                    with contextlib.suppress(Unavailable):
                        await self.backend.run(TOUCH, self._key(url)[:1], [self.ttl_ms, *members])

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def shared_slots(
    config: GatewayConfig, resources: Resources, errors: Counter
) -> Leases | None:
    """The leases of the upstreams' slots in `storage.redis_url`, when configured."""
    admission, storage = config.upstream.admission, config.storage
    url = storage.redis_url
    if url is None or not (admission.enabled and admission.across_replicas):
        return None
    client = await resources.get("redis", lambda: _client(url), _close)
    backend = Backend(
        client,
        storage.redis_timeout_seconds,
        where(url),
        (LEASE, TOUCH),
        log,
        "upstream slots are bounded per replica only",
    )
    await backend.load()
    return Leases(backend, admission, errors)


async def _client(url: str) -> Client:
    return open_client(url)


async def _close(client: Client) -> None:
    await client.close()
