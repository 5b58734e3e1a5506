"""The admission queue alone, against any mix of priorities and hang-ups: slots go in
order of priority then arrival, a waiter that leaves takes nothing with it, and no slot
is lost or given twice."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission import Admission
from gateway.context import RequestContext
from gateway.metrics import Metrics
from gateway.resilience import AdmissionConfig
from gateway.tiers import Tier
from gateway.upstreams import Pool, Upstream
from tests.support.gateways import gateway_config

TIERS = {f"p{n}": Tier(priority=n, max_queue_seconds=60) for n in range(4)}
URL = "http://127.0.0.1:9"


def context(tier: str) -> RequestContext:
    fields = {"tier": tier, "model": "fake", "upstream": None, "queued_seconds": None}
    fields["lease"] = fields["prefix"] = None
    return cast(RequestContext, SimpleNamespace(**fields))


def one_taken_slot() -> tuple[Pool, Admission, Upstream]:
    """An upstream of one slot, taken: every request for it waits."""
    config = gateway_config(URL, models={"fake": {"upstreams": [URL], "slots": 1}})
    pool = Pool.from_config(config)
    admission = Admission(AdmissionConfig(), pool, Metrics(["fake"], TIERS), lambda: TIERS)
    (upstream,) = pool.by_model["fake"]
    upstream.in_flight = 1
    return pool, admission, upstream


async def run(waiters: list[tuple[int, bool]]) -> None:
    pool, admission, upstream = one_taken_slot()  # everyone below waits
    served: list[int] = []

    async def wait(index: int, priority: int) -> None:
        ctx = context(f"p{priority}")
        got = await admission.wait(ctx, upstream)
        assert upstream.in_flight == 1
        served.append(index)
        admission.release(ctx, got)

    tasks = []
    for index, (priority, _) in enumerate(waiters):
        tasks.append(asyncio.create_task(wait(index, priority)))
        await asyncio.sleep(0)  # each joins the queue in turn
    for task, (_, leaves) in zip(tasks, waiters, strict=True):
        if leaves:
            task.cancel()
    await asyncio.sleep(0)
    admission.release(context("p0"), upstream)
    await asyncio.gather(*tasks, return_exceptions=True)
    staying = [(-p, i) for i, (p, leaves) in enumerate(waiters) if not leaves]
    assert served == [i for _, i in sorted(staying)]
    assert (upstream.in_flight, admission.waiting, pool.waiting["fake"]) == (0, 0, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=20))
def test_slots_go_by_priority_then_arrival_and_leavers_take_none(
    waiters: list[tuple[int, bool]],
) -> None:
    asyncio.run(run(waiters))


def test_a_waiter_served_as_its_client_leaves_gives_the_slot_on() -> None:
    async def race() -> Any:
        _, admission, upstream = one_taken_slot()
        first = asyncio.create_task(admission.wait(context("p0"), upstream))
        second = asyncio.create_task(admission.wait(context("p0"), upstream))
        await asyncio.sleep(0)
        admission.release(context("p0"), upstream)  # the slot is handed to `first` ...
        first.cancel()  # ... whose client hangs up before it runs again
        await asyncio.gather(first, return_exceptions=True)
        assert await second is upstream  # the slot went on to the next
        return upstream.in_flight, admission.waiting

    assert asyncio.run(race()) == (1, 0)


def test_a_slot_freed_before_a_leaving_waiter_runs_again_goes_to_the_next() -> None:
    """A client hangs up (its task cancelled, and with it the future it awaits) and, in the
    same turn of the loop, before its own clean-up runs, a slot is freed: the hand-off must
    pass it by, not fail on its cancelled future nor lose the slot."""

    async def race() -> None:
        pool, admission, upstream = one_taken_slot()
        leaving = asyncio.create_task(admission.wait(context("p0"), upstream))
        staying = asyncio.create_task(admission.wait(context("p0"), upstream))
        await asyncio.sleep(0)
        leaving.cancel()
        # Same turn: `leaving` has not run its clean-up yet.
        admission.release(context("p0"), upstream)
        assert await staying is upstream
        await asyncio.gather(leaving, return_exceptions=True)
        assert (upstream.in_flight, admission.waiting, pool.waiting["fake"]) == (1, 0, [])
        admission.release(context("p0"), upstream)
        assert upstream.in_flight == 0

    asyncio.run(race())
