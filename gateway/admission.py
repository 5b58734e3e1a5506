"""Admission: at most `limit` requests in flight per upstream (its slots plus the
overcommit, `Upstream.limit`); the rest wait in a queue per model, ordered by the caller's
tier `priority` (higher first), then by arrival, instead of in llama-server's own FIFO.

A freed slot goes straight to the head of the queue: the request that frees it takes the
waiter's slot for it (`release`), so no newcomer can slip in between. A newcomer joins the
queue while anyone waits, even if it sees a free slot. Past `max_queue` waiters, or past its
tier's `max_queue_seconds`, a request is answered 503 `server_busy`, with a `Retry-After`
from the model's observed service rate and the request's place in the queue.

Cost with a free slot and nobody waiting (`Relay._attempt`): `Upstream.full`, a look at
the model's queue and an increment; no await, no allocation. Slots bound this process only: several
gateway replicas in front of the same llama-servers each keep their own count.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable, Mapping

from gateway.circuit import HALF_OPEN
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.metrics import NONE, Metrics
from gateway.resilience import AdmissionConfig
from gateway.tiers import Tier
from gateway.upstreams import Pool, Upstream

_DEFAULT_TIER = Tier()  # requests without a tier (no auth policy)
_SMOOTHING = 0.2  # weight of the newest interval in the service rate's moving average


class _Queue:
    """One model's waiters: a heap of [-priority, arrival, future of the upstream, the
    upstream its last attempt failed on (if a retry)]."""

    __slots__ = ("heap", "interval", "last")

    def __init__(self, heap: list[list[object]]) -> None:
        self.heap = heap
        # Seconds between two completions while requests waited (an EWMA), once observed.
        self.interval: float | None = None
        self.last: float | None = None  # the last completion while requests waited

    def completed(self, now: float) -> None:
        """A slot freed while requests waited: one more sample of the service rate. The
        first after an idle spell only starts the clock (the gap says nothing of speed)."""
        if self.last is not None:
            gap = now - self.last
            previous = self.interval
            self.interval = gap if previous is None else previous + _SMOOTHING * (gap - previous)
        self.last = now

    def retry_after(self, position: int) -> int:
        """Seconds until `position` (1 for the head) requests ahead have been served."""
        interval = 1.0 if self.interval is None else self.interval
        return max(1, math.ceil(position * interval))


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
        self.queues = {model: _Queue(heap) for model, heap in pool.waiting.items()}
        self.waiting = 0  # in all queues: while 0, a release is a decrement
        self._arrivals = itertools.count()

    async def wait(self, ctx: RequestContext, picked: Upstream) -> Upstream:
        """A slot for `ctx`, once it waited its turn, on whichever upstream of the model frees
        one; `picked` (full, or others wait for the model) gives up the half-open trial it
        may have been given. Give the slot back with `release`."""
        if not picked.full and picked.circuit.state == HALF_OPEN:
            picked.circuit.abandon(True)
        return await self._wait(ctx, str(ctx.model))

    def release(self, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        if self.waiting:
            for model in upstream.models:
                self._hand_off(model)

    def _hand_off(self, model: str) -> None:
        """Free slots of `model`'s usable upstreams to the head of its queue."""
        queue = self.queues[model]
        if queue.heap:
            queue.completed(self.clock())
        while queue.heap:
            head = queue.heap[0]
            future = head[2]
            assert isinstance(future, asyncio.Future)
            if future.done():
                # Its client left (cancelling its task cancels the future it awaits) and its
                # clean-up has not run yet: it leaves the queue here, and takes no slot.
                heapq.heappop(queue.heap)
                self.waiting -= 1
                continue
            try:
                upstream = self.pool.pick(model, avoid=head[3])  # type: ignore[arg-type]
            except GatewayError:  # none usable: the waiters wait on, or time out
                return
            if upstream.full:
                return
            heapq.heappop(queue.heap)
            self.waiting -= 1
            upstream.in_flight += 1
            future.set_result(upstream)

    async def _wait(self, ctx: RequestContext, model: str) -> Upstream:
        queue = self.queues[model]
        tier = self.tiers().get(ctx.tier or "", _DEFAULT_TIER)
        if len(queue.heap) >= self.max_queue:
            raise _busy(model, queue.retry_after(len(queue.heap) + 1), "queue is full")
        future: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        # A retry waits for another upstream than the one its last attempt failed on.
        failed = next((u for u in self.pool.by_model[model] if u.url == ctx.upstream), None)
        entry: list[object] = [-tier.priority, next(self._arrivals), future, failed]
        heapq.heappush(queue.heap, entry)
        self.waiting += 1
        started = self.clock()
        try:
            async with asyncio.timeout(tier.max_queue_seconds):
                return await future
        except TimeoutError:
            if _served(future):  # the slot came as the time ran out: it is taken
                return future.result()
            position = sum(1 for e in queue.heap if e < entry) + 1
            self._leave(queue, entry, future)
            message = f"waited {tier.max_queue_seconds:g} s for a slot"
            raise _busy(model, queue.retry_after(position), message) from None
        except BaseException:  # the client hung up: its place, or its slot, goes to another
            if _served(future):
                self.release(future.result())
            else:
                self._leave(queue, entry, future)
            raise
        finally:
            ctx.queued_seconds = waited = self.clock() - started
            label = ctx.tier if ctx.tier in self.metrics.tiers else NONE
            self.metrics.queue_seconds.labels(model, label).observe(waited)

    def _leave(self, queue: _Queue, entry: list[object], future: asyncio.Future[Upstream]) -> None:
        """Out of the queue, unserved (timed out, or its client hung up)."""
        future.cancel()
        try:
            queue.heap.remove(entry)
        except ValueError:  # a hand-off found it cancelled and took it out already
            return
        heapq.heapify(queue.heap)
        self.waiting -= 1


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
