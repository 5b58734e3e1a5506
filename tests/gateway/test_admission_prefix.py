"""The admission queue with waiters that wait for one upstream (`routing: prefix`): against
any mix of preferences, priorities, hang-ups and holding times, no slot is given beyond an
upstream's limit or twice, every waiter that stays is served, and the counts of who waits
for whom come back to zero."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission import Admission
from gateway.context import RequestContext
from gateway.metrics import Metrics
from gateway.prefix import LOAD, MATCH, Prompt
from gateway.resilience import AdmissionConfig
from gateway.tiers import Tier
from gateway.upstreams import DOWN, Pool, Upstream
from tests.support.gateways import gateway_config

TIERS = {f"p{n}": Tier(priority=n, max_queue_seconds=60) for n in range(3)}
URLS = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
SLOTS = 2

# A waiter: priority, the upstream it waits for (index, or None for any), whether its
# client hangs up, how many turns of the loop it holds the slot it gets.
WAITER = st.tuples(
    st.integers(0, 2), st.none() | st.integers(0, 1), st.booleans(), st.integers(0, 3)
)


def context(tier: str, cached: bool) -> RequestContext:
    prompt = Prompt([], 0, True, route=MATCH if cached else LOAD)
    fields = {"tier": tier, "model": "fake", "upstream": None, "queued_seconds": None}
    fields["lease"], fields["prefix"] = None, prompt
    return cast(RequestContext, SimpleNamespace(**fields))


def both_taken() -> tuple[Pool, Admission, list[Upstream]]:
    models = {"fake": {"upstreams": URLS, "slots": SLOTS, "routing": "prefix"}}
    pool = Pool.from_config(gateway_config(URLS[0], models=models))
    admission = Admission(AdmissionConfig(), pool, Metrics(["fake"], TIERS), lambda: TIERS)
    upstreams = pool.by_model["fake"]
    for upstream in upstreams:
        upstream.in_flight = SLOTS
    return pool, admission, upstreams


async def run(waiters: list[tuple[int, int | None, bool, int]]) -> None:
    pool, admission, upstreams = both_taken()
    served: list[int] = []

    async def wait(index: int, priority: int, prefers: int | None, hold: int) -> None:
        ctx = context(f"p{priority}", prefers is not None)
        got = await admission.wait(ctx, upstreams[prefers or 0])
        assert got.in_flight <= SLOTS
        served.append(index)
        for _ in range(hold):
            await asyncio.sleep(0)
        admission.release(ctx, got)

    tasks = []
    for index, (priority, prefers, _, hold) in enumerate(waiters):
        tasks.append(asyncio.create_task(wait(index, priority, prefers, hold)))
        await asyncio.sleep(0)
    for task, (_, _, leaves, _) in zip(tasks, waiters, strict=True):
        if leaves:
            task.cancel()
    for upstream in upstreams:  # the holders finish, one by one
        for _ in range(SLOTS):
            admission.release(context("p0", False), upstream)
            await asyncio.sleep(0)
    await asyncio.gather(*tasks, return_exceptions=True)
    staying = {i for i, (_, _, leaves, _) in enumerate(waiters) if not leaves}
    assert set(served) == staying
    assert len(served) == len(staying)
    assert [(u.in_flight, u.wanted) for u in upstreams] == [(0, 0), (0, 0)]
    assert (admission.waiting, pool.waiting["fake"]) == (0, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(WAITER, max_size=16))
def test_no_slot_is_lost_or_given_twice_whoever_waits_for_whom(
    waiters: list[tuple[int, int | None, bool, int]],
) -> None:
    asyncio.run(run(waiters))


def test_a_waiter_for_a_busy_upstream_lets_others_take_the_other() -> None:
    """The head waits for upstream 0, where its prompt is cached; a slot freed on upstream
    1 (still busy) stays free for it, and the next request to come takes it at once,
    whatever its priority."""

    async def scene() -> Any:
        _, admission, (home, other) = both_taken()
        cached = asyncio.create_task(admission.wait(context("p2", True), home))
        await asyncio.sleep(0)
        admission.release(context("p0", False), other)  # one left in flight there
        await asyncio.sleep(0)
        assert not cached.done()
        assert await admission.wait(context("p0", False), home) is other
        admission.release(context("p0", False), home)
        return await cached is home, home.wanted, admission.waiting

    assert asyncio.run(scene()) == (True, 0, 0)


def test_a_waiter_for_an_upstream_gone_down_takes_another() -> None:
    async def scene() -> Any:
        _, admission, (home, other) = both_taken()
        cached = asyncio.create_task(admission.wait(context("p2", True), home))
        await asyncio.sleep(0)
        home.mark(DOWN, "probe failed")
        admission.release(context("p0", False), other)  # one left in flight there
        return await cached is other, home.wanted

    assert asyncio.run(scene()) == (True, 0)
