"""Rate limits: token buckets for requests and tokens, in-flight counts and token quotas.

One atomic script call at admission checks and charges every bucket the request touches
(per caller; per user and per whole tier where configured): tokens are reserved as the
prompt estimate plus max_tokens. At most one call at completion charges the difference
with the real usage and frees the in-flight slot. OpenAI's `x-ratelimit-*` headers go
on every answer the policy admitted or refused.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from gateway.context import REJECTED, UPSTREAM_ERROR, Reply, RequestContext
from gateway.endpoints import GENERATING, MODEL_ENDPOINTS
from gateway.errors import GatewayError
from gateway.policy import Check, Policy, PolicyEnv
from gateway.redis_scripts import where as redis_where
from gateway.tiers import unknown_tiers
from policies.rate_limit.buckets import (
    MINUTE_MS,
    QUOTAS,
    Plan,
    completion_tokens,
    make_plan,
    prompt_tokens,
)
from policies.rate_limit.headers import refusal, set_headers
from policies.rate_limit.metrics import FAIL_CLOSED, FAIL_OPEN, SETTLE_LOST, RateLimitMetrics
from policies.rate_limit.settings import (
    REQUESTS,
    Limits,
    RateLimitSettings,
)
from policies.rate_limit.slots import Held, Keeper
from policies.rate_limit.store import ADMIT, SETTLE, Backend, Unavailable, backend, open_client

log = logging.getLogger("policies.rate_limit")

_PLAN_CACHE = 10_000


@dataclass(slots=True)
class Admission:
    plan: Plan
    indexes: list[int]  # the plan's buckets this request touched, in script order
    keys: list[str]
    costs: list[int]
    prompt: int  # estimated prompt tokens
    reserved: int  # prompt estimate + the most the answer may cost
    member: str  # this request in the in-flight sets
    results: list[int]  # remaining_1, reset_ms_1, ... as the script returned them
    clock: int = 0  # Redis's time at admission, unix ms
    held: Held | None = None  # its in-flight slots, kept while it runs
    admitted: bool = True
    # Whether the admission ran is unknown (no answer in time, connection lost, or the
    # request cancelled while waiting): its in-flight slot may be taken, so completion
    # frees it (and charges nothing else).
    uncertain: bool = True


class RateLimitPolicy(Policy):
    name = "rate_limit"
    Settings = RateLimitSettings
    settings: RateLimitSettings

    def __init__(self, settings: RateLimitSettings, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        self.backend: Backend | None = None
        self.keeper: Keeper | None = None
        self._plans: dict[tuple[str | None, str, str | None], Plan] = {}
        self._member = f"{secrets.token_hex(8)}:"
        self._counter = itertools.count(1)
        self._ttl_ms = int(settings.concurrency_ttl_seconds * 1000)
        self._action = FAIL_OPEN if settings.failure_mode == "open" else FAIL_CLOSED
        self.metrics = RateLimitMetrics(env.metrics, settings, env.tiers)

    @classmethod
    def problems(cls, settings: RateLimitSettings, env: PolicyEnv) -> list[str]:
        return unknown_tiers(((f"tiers.{name}", name) for name in settings.tiers), env.tiers)

    async def start(self) -> None:
        storage = self.env.config.storage
        client = await self.env.resources.get(
            "redis", lambda: _async(open_client(storage)), _close_client
        )

        async def create() -> Backend:
            made = backend(client, storage, redis_where(storage.redis_url))
            await made.load()
            return made

        shared = await self.env.resources.get("rate_limit.backend", create, _nothing)
        self.backend, self.keeper = shared, Keeper(shared, self._ttl_ms)

    async def readiness(self) -> Mapping[str, Check]:
        if self.backend is None or not self.env.config.storage.redis_url:
            return {}  # the embedded store cannot fail on its own
        # Failing open, the gateway serves without Redis: report, but stay in rotation.
        required = self.settings.failure_mode == "closed"
        return {"rate_limit:redis": Check(await self.backend.ping(), required)}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        limits = self.settings.tiers.get(ctx.tier) if ctx.tier else self.settings.default
        if limits is None:
            return None
        principal = ctx.principal or f"ip:{ctx.request.remote}"
        plan = self._plan(ctx.tier, limits, principal, ctx.subject)
        if not plan.buckets:
            return None
        admission = await self._prepare(ctx, plan)
        assert self.backend is not None, "start() runs before any request"
        args: list[Any] = [admission.member, self._ttl_ms]
        for i, cost in zip(admission.indexes, admission.costs, strict=True):
            bucket = plan.buckets[i]
            args += [bucket.kind, bucket.limit, cost, MINUTE_MS]
        ctx.state[self.name] = admission  # uncertain until the script's answer comes
        try:
            result = await self.backend.run(ADMIT, admission.keys, args)
        except Unavailable as exc:
            admission.admitted, admission.uncertain = False, exc.maybe_ran
            return self._unavailable(exc)
        admission.uncertain = False
        admission.clock, admission.results = result[3], result[4:]
        if result[0] != 1:
            admission.admitted = False
            position = result[1] - 1
            bucket = plan.buckets[admission.indexes[position]]
            self.metrics.refusal(ctx.tier, bucket.unit)
            raise refusal(bucket, ctx.tier, admission.costs[position], result[2])
        self._hold_slots(admission)
        return None

    def _hold_slots(self, admission: Admission) -> None:
        touched = zip(admission.indexes, admission.keys, strict=True)
        slots = [key for i, key in touched if admission.plan.buckets[i].kind == "c"]
        if slots:
            assert self.keeper is not None
            admission.held = self.keeper.hold(slots, admission.member)

    def _plan(self, tier: str | None, limits: Limits, principal: str, subject: str | None) -> Plan:
        cache_key = (tier, principal, subject)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = make_plan(self.settings.key_prefix, tier, limits, principal, subject)
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[cache_key] = plan
        return plan

    async def _prepare(self, ctx: RequestContext, plan: Plan) -> Admission:
        """What this request touches and reserves (the model list: a request, no tokens)."""
        if ctx.endpoint not in MODEL_ENDPOINTS:
            indexes = [i for i, b in enumerate(plan.buckets) if b.unit == REQUESTS]
            prompt = reserved = 0
        else:
            body = await ctx.json()
            tier = self.env.tiers.get(ctx.tier) if ctx.tier else None
            prompt = prompt_tokens(ctx.endpoint, body)
            answer = 0
            if ctx.endpoint in GENERATING:
                cap = tier.max_tokens if tier else None
                answer = completion_tokens(
                    ctx.endpoint, body, cap, self.settings.default_max_tokens
                )
            reserved = prompt + answer
            indexes = list(range(len(plan.buckets)))
        keys = [plan.buckets[i].key for i in indexes]
        costs = [
            1 if plan.buckets[i].unit == REQUESTS else min(reserved, plan.buckets[i].limit)
            for i in indexes
        ]
        member = f"{self._member}{next(self._counter)}"
        return Admission(plan, indexes, keys, costs, prompt, reserved, member, [])

    def _unavailable(self, exc: Unavailable) -> Reply | None:
        self.metrics.redis_failed(self._action)
        if self._action == FAIL_OPEN:
            return None
        raise GatewayError(
            503,
            "Rate limits cannot be checked right now (the gateway's Redis is unavailable), "
            "so the request was not run. Retry shortly.",
            type="server_error",
            code="rate_limiter_unavailable",
            headers={"Retry-After": "1"},
        ) from exc

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        admission: Admission | None = ctx.state.get(self.name)
        if admission is not None and admission.results:
            touched = [admission.plan.buckets[i] for i in admission.indexes]
            set_headers(touched, admission.results, headers)

    async def on_complete(self, ctx: RequestContext) -> None:
        admission: Admission | None = ctx.state.get(self.name)
        if admission is not None and admission.held is not None:
            assert self.keeper is not None
            self.keeper.release(admission.held)
        if admission is None or not admission.plan.settles:
            return
        if not (admission.admitted or admission.uncertain):
            return
        used = tokens_used(ctx, admission)
        keys: list[str] = []
        args: list[Any] = [admission.member]
        charged = zip(admission.indexes, admission.keys, admission.costs, strict=True)
        for position, (i, key, cost) in enumerate(charged):
            bucket = admission.plan.buckets[i]
            # Uncertain: nothing known to settle, only the slot is freed.
            if bucket.kind != "c" and (
                admission.uncertain or bucket.unit == REQUESTS or used == cost
            ):
                continue
            keys.append(key)
            args += [bucket.kind, bucket.limit, used - cost if bucket.kind != "c" else 0]
            args.append(_settle_extra(admission, position, bucket.kind))
        if not keys:
            return
        assert self.backend is not None
        try:
            await self.backend.run(SETTLE, keys, args)
        except Unavailable:
            # The reservation stands (buckets refill anyway) and the in-flight slot
            # frees itself after concurrency_ttl_seconds.
            self.metrics.redis_failed(SETTLE_LOST)


def _settle_extra(admission: Admission, position: int, kind: str) -> int:
    """What settle.lua needs besides the charge: a token bucket's refill period, or the
    end of the quota window the admission charged (Redis's time plus the reset)."""
    if kind in QUOTAS:
        return admission.clock + admission.results[2 * position + 1]
    return MINUTE_MS


def tokens_used(ctx: RequestContext, admission: Admission) -> int:
    """What the request really cost, or the best estimate of it where usage is unknown."""
    if ctx.cached:
        return 0  # answered from a stored answer: a request, no tokens generated
    usage = ctx.usage
    if usage is not None:
        total = usage.get("total_tokens")
        if isinstance(total, int):
            return total
        parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        return sum(p for p in parts if isinstance(p, int))
    if ctx.upstream is None or ctx.outcome == REJECTED or ctx.status >= 400:
        return 0  # the upstream never ran it, or refused it
    if ctx.stream:
        # llama-server writes one event per token (after one with the role).
        return admission.prompt + max(0, ctx.events_sent - 1)
    if ctx.outcome == UPSTREAM_ERROR:
        return admission.prompt  # the answer broke off: the client got nothing
    # The client left while the answer was being generated (how much of it was is
    # unknowable), or an answer came without usage: the reservation stands, so that
    # leaving early is not a way to free generation.
    return admission.reserved


async def _async(value: Any) -> Any:
    return value


async def _close_client(client: Any) -> None:
    await client.close()


async def _nothing(_: Any) -> None:
    return None
