"""One model's requests waiting for a slot (`gateway.admission`): a heap ordered by tier
priority (higher first), then by arrival, and which of them may take a freed slot.

An entry is [-priority, arrival, future of the upstream, the upstream its last attempt
failed on (a retry), its request, the upstream it waits for or None for any]. A request
routed by prefix (`gateway.prefix`) to a full upstream waits for a slot of that one, where
its prompt is cached; it takes another's only when that one is idle or its own is much
busier (`gateway.prefix.may_take`), so a slot may go to a waiter behind the head.
"""

from __future__ import annotations

import asyncio
import heapq
import math

from gateway.prefix import PrefixConfig, may_take
from gateway.upstreams import Upstream

Entry = list[object]

_SMOOTHING = 0.2  # weight of the newest interval in the service rate's moving average


class Tally:
    """Requests waiting in all the queues of a gateway: while 0, a release is a decrement."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class WaitQueue:
    __slots__ = ("heap", "interval", "last", "prefix", "tally", "upstreams")

    def __init__(
        self,
        heap: list[Entry],
        upstreams: list[Upstream] | None = None,
        prefix: PrefixConfig | None = None,
        tally: Tally | None = None,
    ) -> None:
        self.heap = heap  # `Pool.waiting[model]`, for `llama_gateway_queue_depth`
        self.upstreams = upstreams or []  # the model's
        self.prefix = prefix  # the model's prefix routing, if it has it
        self.tally = tally or Tally()
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

    def push(self, entry: Entry, preferred: Upstream | None) -> None:
        heapq.heappush(self.heap, entry)
        self.tally.count += 1
        if preferred is not None:
            entry[5] = preferred
            preferred.wanted += 1

    def head(self) -> Entry | None:
        """The first entry still waiting."""
        heap = self.heap
        while heap:
            head = heap[0]
            future = head[2]
            assert isinstance(future, asyncio.Future)
            if not future.done():
                return head
            # Its client left (cancelling its task cancels the future it awaits) and its
            # clean-up has not run yet: it leaves the queue here, and takes no slot.
            heapq.heappop(heap)
            self._forget(head)
        return None

    def first_for(self, upstream: Upstream) -> Entry | None:
        """The first entry by priority and arrival that may take a slot of `upstream`: the
        head, unless it waits for another upstream or its last attempt failed here."""
        head = self.head()
        if head is None or self._may_take(head, upstream):
            return head
        for entry in sorted(self.heap):
            if not entry[2].done() and self._may_take(entry, upstream):  # type: ignore[attr-defined]
                return entry
        return None

    def _may_take(self, entry: Entry, upstream: Upstream) -> bool:
        failed, preferred = entry[3], entry[5]
        if upstream is failed:  # only when no other is usable
            return not any(u.usable and u is not failed for u in self.upstreams)
        if preferred is None or preferred is upstream:
            return True
        assert isinstance(preferred, Upstream)
        assert self.prefix is not None
        return not preferred.usable or may_take(preferred, upstream, self.prefix)

    def take(self, entry: Entry) -> None:
        """`entry` leaves the queue, served."""
        if entry is self.heap[0]:
            heapq.heappop(self.heap)
        else:
            self.heap.remove(entry)
            heapq.heapify(self.heap)
        self._forget(entry)

    def leave(self, entry: Entry) -> None:
        """`entry` leaves the queue unserved (timed out, or its client hung up)."""
        future = entry[2]
        assert isinstance(future, asyncio.Future)
        future.cancel()
        try:
            self.heap.remove(entry)
        except ValueError:  # `head` found it cancelled and took it out already
            return
        heapq.heapify(self.heap)
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        self.tally.count -= 1
        preferred = entry[5]
        if isinstance(preferred, Upstream):
            preferred.wanted -= 1
