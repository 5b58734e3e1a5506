"""Admission: at most `limit` requests in flight per upstream (its slots plus the
overcommit, `Upstream.limit`); the rest wait in a queue per model, ordered by the caller's
tier `priority` (higher first), then by arrival, instead of in llama-server's own FIFO.

A freed slot goes straight to the first waiter that may take it (the head, unless that one
waits for another upstream: `gateway.waitqueue`): the request that frees it takes the
waiter's slot for it (`release`), so no newcomer can slip in between. A newcomer joins the
queue while anyone waits, even if it sees a free slot. Past `max_queue` waiters, or past its
tier's `max_queue_seconds`, a request is answered 503 `server_busy`, with a `Retry-After`
from the model's observed service rate and the request's place in the queue.

Cost with a free slot and nobody waiting (`Relay._attempt`): `Upstream.full`, a look at
the model's queue and an increment; no await, no allocation. With `leases` (`gateway.leases`)
the bound holds across the gateway replicas sharing a Redis: a request also takes a lease
there, a freed slot's lease goes to the head of the queue (within the replica's fair share),
and while requests wait, a poll asks Redis every `poll_seconds` for slots others freed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import cast

from gateway.circuit import HALF_OPEN
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.leases import Leases
from gateway.metrics import NONE, Metrics
from gateway.prefix import ANCHOR, LOAD, MATCH, load
from gateway.resilience import AdmissionConfig
from gateway.tiers import Tier
from gateway.upstreams import Pool, Upstream
from gateway.waitqueue import Entry, Tally, WaitQueue

log = logging.getLogger("gateway.admission")

_DEFAULT_TIER = Tier()  # requests without a tier (no auth policy)


class Admission:
    def __init__(
        self,
        config: AdmissionConfig,
        pool: Pool,
        metrics: Metrics,
        tiers: Callable[[], Mapping[str, Tier]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_queue = config.max_queue
        self.pool = pool
        self.metrics = metrics
        self.tiers = tiers
        self.clock = clock
        self.tally = Tally()
        self.queues = {
            model: WaitQueue(heap, pool.by_model[model], pool.prefix.get(model), self.tally)
            for model, heap in pool.waiting.items()
        }
        self._arrivals = itertools.count()
        self.leases: Leases | None = None  # set by `start`: slots shared with other replicas
        self.poll_seconds = config.poll_seconds
        self._polls: dict[str, asyncio.Task[None]] = {}  # by model, while requests wait
        for upstream in pool.upstreams:
            upstream.freed = self.freed

    @property
    def waiting(self) -> int:
        """Requests waiting in all queues."""
        return self.tally.count

    def freed(self, upstream: Upstream) -> None:
        """`upstream` can take more (healthy again, more slots): to its models' waiters now,
        not at the next release. With leases, the poll finds it."""
        if self.waiting and self.leases is None:
            for model in upstream.models:
                self._hand_off(model, self.queues[model])

    async def lease(self, ctx: RequestContext, upstream: Upstream) -> Upstream:
        """A slot on `upstream`, which has one free in this replica, once Redis says the
        other replicas leave one too; else a wait in the queue. Give it back with `release`."""
        assert self.leases is not None
        upstream.in_flight += 1
        try:
            admitted, ctx.lease = await self.leases.take(upstream, waiting=False)
        except BaseException:
            upstream.in_flight -= 1
            raise
        if admitted:
            return upstream
        upstream.in_flight -= 1
        return await self.wait(ctx, upstream)

    async def wait(self, ctx: RequestContext, picked: Upstream) -> Upstream:
        """A slot for `ctx`, once it waited its turn, on whichever upstream of the model frees
        one; `picked` (full, or others wait for the model) gives up the half-open trial it
        may have been given. Give the slot back with `release`."""
        if not picked.full and picked.circuit.state == HALF_OPEN:
            picked.circuit.abandon(True)
        return await self._wait(ctx, str(ctx.model), picked)

    def release(self, ctx: RequestContext, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        if self.waiting:
            for model in upstream.models:
                queue = self.queues[model]
                if queue.heap:
                    queue.completed(self.clock())
                if self.leases is None:
                    self._hand_off(model, queue)
                elif ctx.lease is not None and self._hand_lease(queue, upstream, ctx):
                    return
        if ctx.lease is not None:
            assert self.leases is not None
            self.leases.give_back(upstream, ctx.lease)
            ctx.lease = None

    def _hand_off(self, model: str, queue: WaitQueue) -> None:
        """Free slots of `model`'s usable upstreams, the least busy first, to the first
        waiters that may take them."""
        while queue.head() is not None:
            free = [u for u in self.pool.by_model[model] if u.usable and not u.full]
            for upstream in sorted(free, key=load):
                entry = queue.first_for(upstream)
                if entry is not None:
                    self.pool.claim(upstream)
                    self._serve(queue, upstream, None, entry)
                    break
            else:
                return

    def _hand_lease(self, queue: WaitQueue, upstream: Upstream, ctx: RequestContext) -> bool:
        """The lease `ctx` is done with to the first waiter of `queue` that may take
        `upstream`, if this replica is within its share of it while other replicas wait."""
        assert self.leases is not None
        if not upstream.usable or upstream.full:
            return False
        if upstream.in_flight >= self.leases.share(upstream):
            return False
        entry = queue.first_for(upstream)
        if entry is None:
            return False
        self._serve(queue, upstream, ctx.lease, entry)
        ctx.lease = None
        return True

    def _serve(self, queue: WaitQueue, upstream: Upstream, lease: str | None, entry: Entry) -> None:
        """`entry` leaves `queue` for `upstream`, with `lease` if the slot is shared."""
        queue.take(entry)
        upstream.in_flight += 1
        waiter = cast(RequestContext, entry[4])
        waiter.lease = lease
        if entry[5] not in (None, upstream) and waiter.prefix is not None:
            waiter.prefix.route = LOAD  # it waited for another upstream, then took this one
        entry[2].set_result(upstream)  # type: ignore[attr-defined]

    async def _poll(self, model: str, queue: WaitQueue) -> None:
        """While `model`'s requests wait, ask Redis for slots other replicas freed."""
        try:
            while queue.heap:
                try:
                    served = await self._poll_once(model, queue)
                except Exception:  # a fault of the gateway's own: logged; the poll goes on
                    log.exception("polling for slots of %s failed", model)
                    served = False
                if not served:
                    await asyncio.sleep(self.poll_seconds)
        finally:
            del self._polls[model]  # no await since the queue was found empty

    async def _poll_once(self, model: str, queue: WaitQueue) -> bool:
        assert self.leases is not None
        if queue.head() is None:
            return False
        candidates = [u for u in self.pool.by_model[model] if u.usable]
        for upstream in sorted(candidates, key=lambda u: u.in_flight):
            if upstream.full:  # taken by this replica: others may wait for its share
                await self.leases.peek(upstream)
                continue
            if queue.first_for(upstream) is None:
                continue
            upstream.in_flight += 1
            try:
                admitted, lease = await self.leases.take(upstream, waiting=True)
            finally:
                upstream.in_flight -= 1
            if not admitted:
                continue
            entry = queue.first_for(upstream)  # it may have left meanwhile
            if entry is None or upstream.full:
                if lease is not None:
                    self.leases.give_back(upstream, lease)
                return False
            self._serve(queue, upstream, lease, entry)
            return True
        return False

    async def close(self) -> None:
        for task in list(self._polls.values()):
            task.cancel()
        await asyncio.gather(*self._polls.values(), return_exceptions=True)
        if self.leases is not None:
            await self.leases.close()

    async def _wait(self, ctx: RequestContext, model: str, picked: Upstream) -> Upstream:
        queue = self.queues[model]
        tier = self.tiers().get(ctx.tier or "", _DEFAULT_TIER)
        if len(queue.heap) >= self.max_queue:
            raise _busy(model, queue.retry_after(len(queue.heap) + 1), "queue is full")
        future: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        # A retry waits for another upstream than the one its last attempt failed on.
        failed = next((u for u in self.pool.by_model[model] if u.url == ctx.upstream), None)
        entry: Entry = [-tier.priority, next(self._arrivals), future, failed, ctx, None]
        # Its prompt cached on `picked`: it waits for a slot of that one (`gateway.waitqueue`).
        preferred = picked if picked is not failed and _cached_on(ctx, picked) else None
        queue.push(entry, preferred)
        if self.leases is None:  # a slot may be free: others wait for another upstream's
            self._hand_off(model, queue)
        elif model not in self._polls:
            self._polls[model] = asyncio.create_task(
                self._poll(model, queue), name="admission.poll"
            )
        started = self.clock()
        try:
            async with asyncio.timeout(tier.max_queue_seconds):
                return await future
        except TimeoutError:
            if _served(future):  # the slot came as the time ran out: it is taken
                return future.result()
            position = sum(1 for e in queue.heap if e < entry) + 1
            queue.leave(entry)
            message = f"waited {tier.max_queue_seconds:g} s for a slot"
            raise _busy(model, queue.retry_after(position), message) from None
        except BaseException:  # the client hung up: its place, or its slot, goes to another
            if _served(future):
                self.release(ctx, future.result())
            else:
                queue.leave(entry)
            raise
        finally:
            ctx.queued_seconds = waited = self.clock() - started
            label = ctx.tier if ctx.tier in self.metrics.tiers else NONE
            self.metrics.queue_seconds.labels(model, label).observe(waited)


def _cached_on(ctx: RequestContext, upstream: Upstream) -> bool:
    """Was `upstream` chosen for where part of `ctx`'s prompt is cached: it was sent that
    part (a match), or it is the anchor of a conversation another replica served? Not a new
    conversation placed on its anchor by a tie: nothing of it is cached there."""
    prompt = ctx.prefix
    if prompt is None or upstream.prefixes is None:
        return False
    return prompt.route == MATCH or (prompt.route == ANCHOR and prompt.follow_up)


def _served(future: asyncio.Future[Upstream]) -> bool:
    return future.done() and not future.cancelled()


def _busy(model: str, retry_after: int, why: str) -> GatewayError:
    return GatewayError(
        503,
        f"The model '{model}' is busy ({why}); retry in {retry_after} s.",
        type="server_error",
        code="server_busy",
        headers={"Retry-After": str(retry_after)},
    )
