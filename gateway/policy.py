"""The policy interface and the chain that runs policies around every request.

Hook order (Envoy's filter contract):
- `on_request` runs in configured order. A policy may answer instead of the upstream by
  returning a `Reply` or raising `GatewayError`; later policies' `on_request` then do not run.
- `on_response`, `on_event` and `on_complete` run in reverse order, and only for the
  policies whose `on_request` ran (the one that answered included).
- `on_complete` is always called for those policies, whatever the outcome: success,
  an error, a rejection, or the client hanging up.

The chain keeps, per hook, only the policies that override it, so a hook nobody
implements costs nothing; when no policy implements `on_event` the relay copies bytes.

A policy may also serve HTTP routes of its own outside the chain (`routes()`, e.g. an
admin endpoint); the application mounts them at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import GatewayConfig
from gateway.config import PolicySettings as PolicySettings  # re-exported: the plugin API
from gateway.context import Reply, RequestContext
from gateway.metrics import Metrics
from gateway.resources import Resources
from gateway.tiers import Tier
from gateway.upstreams import Pool
from gateway.variants import VARIANT_HEADER

log = logging.getLogger("gateway.policy")

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PolicyEnv:
    """What a policy may use besides its own settings."""

    config: GatewayConfig
    tiers: Mapping[str, Tier]
    resources: Resources
    # The application's metrics, the same across reloads: a policy registers its own with
    # `metrics.counter(...)`, `.gauge(...)` or `.histogram(...)` when it is built.
    metrics: Metrics = field(default_factory=Metrics)
    # The upstreams of every model, the same across reloads: what serves a model
    # (`upstreams.identity(model)`, e.g. to key stored answers) and, for a policy that
    # calls a model itself, `upstreams.pick(model)`.
    upstreams: Pool = field(default_factory=Pool)


class Check(NamedTuple):
    ok: bool
    # A failing required check takes the replica out of rotation (`/ready` answers 503);
    # one that is not required (the policy copes, e.g. by journaling) is only reported.
    required: bool = True


READY_SECONDS = 2.0


class Policy:
    """No-op defaults; a policy overrides only the hooks it needs."""

    name: ClassVar[str] = "policy"
    Settings: ClassVar[type[PolicySettings]] = PolicySettings

    def __init__(self, settings: Any, env: PolicyEnv) -> None:
        self.settings = settings
        self.env = env

    @classmethod
    def problems(cls, settings: Any, env: PolicyEnv) -> list[str]:
        """Cross-checks beyond the settings model (e.g. tier names), as `path: message`."""
        return []

    async def start(self) -> None:
        """Open connections and start background work; called once, at start-up or, for
        a reload's new chain, before it is swapped in."""

    async def close(self) -> None:
        """Flush and release what `start` opened; called once, when this chain is retired
        after a reload and idle, or at shutdown."""

    def routes(self) -> Mapping[tuple[str, str], RouteHandler]:
        """Extra HTTP routes, `(method, path) -> handler`, served outside the chain.

        Mounted when the application is created; each request goes to the instance of this
        policy in the chain in force, so a reload's settings apply. A route that only a
        reloaded document adds is served after a restart.
        """
        return {}

    async def readiness(self) -> Mapping[str, Check]:
        """Named checks of the dependencies this policy needs, for `GET /ready`.

        Called on every readiness probe: keep each check to one cheap call (a PING, a
        `SELECT 1`) bounded in time; the chain gives each policy `READY_SECONDS` at most.
        """
        return {}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        return None

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        """Called with the status in `ctx.status` and the response headers, before they are sent."""

    async def on_event(self, ctx: RequestContext, event: bytes) -> bytes | None:
        """One complete SSE event (`data: ...\\n\\n`) or a whole JSON body; None drops it."""
        return event

    async def on_complete(self, ctx: RequestContext) -> None:
        """Always called once the answer is over; `ctx.outcome` says how it ended."""


def _overrides(policy: Policy, hook: str) -> bool:
    return getattr(type(policy), hook) is not getattr(Policy, hook)


class Chain:
    def __init__(self, policies: list[Policy]) -> None:
        self.policies = policies
        # Requests still using this chain; a replaced chain is closed when it drops to 0.
        self.active = 0
        indexed = list(enumerate(policies))
        self._request = [(i, p) for i, p in indexed if _overrides(p, "on_request")]
        self._response = [(i, p) for i, p in reversed(indexed) if _overrides(p, "on_response")]
        self._event = [(i, p) for i, p in reversed(indexed) if _overrides(p, "on_event")]
        self._complete = [(i, p) for i, p in reversed(indexed) if _overrides(p, "on_complete")]
        self._ready = [p for p in policies if _overrides(p, "readiness")]

    @property
    def wants_events(self) -> bool:
        return bool(self._event)

    @property
    def wants_completion(self) -> bool:
        return bool(self._complete)

    async def start(self) -> None:
        for policy in self.policies:
            await policy.start()

    async def close(self) -> None:
        for policy in reversed(self.policies):
            try:
                await policy.close()
            except Exception:
                log.exception("policy %s failed to close", policy.name)

    async def readiness(self) -> dict[str, Check]:
        """Every policy's checks, run at once; a policy that does not answer in time fails."""
        found = await asyncio.gather(*(_ready(p) for p in self._ready))
        return {name: check for checks in found for name, check in checks.items()}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        """Run request hooks; `ctx.entered` records how far the chain got."""
        for index, policy in self._request:
            ctx.entered = index + 1
            reply = await policy.on_request(ctx)
            if reply is not None:
                return reply
        ctx.entered = len(self.policies)
        return None

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        """Every answer's head passes here, the core's own headers set first."""
        if ctx.variant is not None:  # which variant of an experiment answers (`gateway.variants`)
            headers[VARIANT_HEADER] = ctx.variant.model
        entered = ctx.entered
        for index, policy in self._response:
            if index < entered:
                await policy.on_response(ctx, headers)

    async def on_event(self, ctx: RequestContext, event: bytes) -> bytes | None:
        entered = ctx.entered
        for index, policy in self._event:
            if index < entered:
                result = await policy.on_event(ctx, event)
                if result is None:
                    return None
                event = result
        return event

    async def on_complete(self, ctx: RequestContext) -> None:
        entered = ctx.entered
        for index, policy in self._complete:
            if index < entered:
                try:
                    await policy.on_complete(ctx)
                except Exception:
                    # One failing policy must not keep the others from their completion work.
                    log.exception("policy %s failed in on_complete", policy.name)


async def _ready(policy: Policy) -> Mapping[str, Check]:
    try:
        async with asyncio.timeout(READY_SECONDS):
            return await policy.readiness()
    except Exception as exc:  # a check that breaks is a failing check, never a 500
        log.warning("readiness check of policy %s failed: %r", policy.name, exc)
        return {policy.name: Check(False)}


def describe(chain: Chain) -> Mapping[str, list[str]]:
    """The hook lists in the order they run, for logs and tests."""
    return {
        "on_request": [p.name for _, p in chain._request],
        "on_response": [p.name for _, p in chain._response],
        "on_event": [p.name for _, p in chain._event],
        "on_complete": [p.name for _, p in chain._complete],
    }
