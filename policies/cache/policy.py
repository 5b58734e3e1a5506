"""The exact response cache: a deterministic request's answer, stored once, served to the
same scope again without calling the upstream.

`on_request` decides (cacheable? `Cache-Control`? what serves the model?), looks the key
up and answers a hit itself, as JSON or as SSE; identical misses in flight at once wait
for the first (`policies.cache.coalesce`). A miss it may store taps the answer on its
way to the client, and `on_complete` stores it when it came whole, from a client still
there. `on_response` puts `X-Cache` (and `Age` on hits) on every answer it saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.context import OK, Reply, RequestContext
from gateway.endpoints import GENERATING
from gateway.errors import GatewayError
from gateway.policy import Check, Policy, PolicyEnv
from gateway.redis_scripts import where as redis_where
from gateway.streaming import STREAM_HEADERS
from gateway.tiers import unknown_tiers
from policies.cache.assemble import Assembler
from policies.cache.coalesce import InFlight
from policies.cache.control import directives
from policies.cache.entry import Entry, answer_of
from policies.cache.key import (
    CACHED_ENDPOINTS,
    STREAMED_ENDPOINTS,
    cache_key,
    deterministic,
    scope_of,
)
from policies.cache.metrics import (
    BYPASS,
    CACHE_NOT_STORED,
    DISABLED,
    HIT,
    IDENTITY_UNKNOWN,
    MISS,
    NO_STORE,
    NOT_CACHEABLE,
    STORE_DOWN,
    CacheMetrics,
)
from policies.cache.replay import replay
from policies.cache.semantic import semantic_problems
from policies.cache.settings import CacheSettings, Rules
from policies.cache.similar import Probe, Similar
from policies.cache.store import RedisStore, Store, StoreDown, open_store

_REPLAY_HEADERS = {k: v for k, v in STREAM_HEADERS.items() if k != "Content-Type"}


@dataclass(slots=True)
class Lookup:
    """What the policy decided for one request, for its later hooks."""

    result: str
    rules: Rules
    key: str = ""
    entry: Entry | None = None  # the answer served (a hit)
    leads: bool = False  # identical misses wait for this one
    body: bytes | None = None  # a non-streamed answer, as tapped
    assembler: Assembler | None = None  # a streamed answer, as tapped
    probe: Probe | None = None  # its side of the semantic index, when that is on
    similarity: float | None = None  # a semantic hit's

    def keep(self, body: bytes) -> None:
        self.body = body


class CachePolicy(Policy):
    name = "cache"
    Settings = CacheSettings
    settings: CacheSettings

    def __init__(self, settings: CacheSettings, env: PolicyEnv) -> None:
        super().__init__(settings, env)
        self.models = frozenset(env.config.models)
        self.metrics = CacheMetrics(env.metrics, self.models)
        self.default = settings.rules(None)
        self.rules = {tier: settings.rules(tier) for tier in env.tiers}
        self.wait = settings.coalesce_wait_seconds
        self.store: Store | None = None
        self.similar: Similar | None = None
        self.inflight = InFlight()

    @classmethod
    def problems(cls, settings: CacheSettings, env: PolicyEnv) -> list[str]:
        found = unknown_tiers(((f"tiers.{name}", name) for name in settings.tiers), env.tiers)
        if settings.semantic is not None:
            found += semantic_problems(settings.semantic, env)
        return found

    async def start(self) -> None:
        self.store, client = await open_store(self.settings, self.env, self.metrics)
        semantic = self.settings.semantic
        if semantic is not None:
            url = self.settings.redis_url or self.env.config.storage.redis_url
            prefix = self.settings.key_prefix
            self.similar = Similar(semantic, self.env, client, prefix, redis_where(url))
            await self.similar.start()

    async def close(self) -> None:
        if self.similar is not None:
            await self.similar.close()

    async def readiness(self) -> Mapping[str, Check]:
        if not isinstance(self.store, RedisStore):
            return {}
        # Without its Redis the gateway serves uncached: report, stay in rotation.
        return {"cache:redis": Check(await self.store.ping(), required=False)}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        rules = self.rules.get(ctx.tier, self.default) if ctx.tier else self.default
        state = ctx.state[self.name] = Lookup(BYPASS, rules)
        try:
            key, fresh = await self._key(ctx, state)
        except _Bypass as bypass:
            self.metrics.bypass(ctx.endpoint, bypass.reason)
            return None
        except GatewayError:  # an unreadable body, refused with a 400
            self.metrics.bypass(ctx.endpoint, NOT_CACHEABLE)
            raise
        state.key = key
        return await self._lookup_or_lead(ctx, state, fresh)

    async def _key(self, ctx: RequestContext, state: Lookup) -> tuple[str, bool]:
        """The request's key and whether it asks for a fresh answer (`no-cache`);
        `_Bypass` when it is not to be cached. Cheap until the request is known to be
        cacheable: a few lookups, no canonical form, no hash."""
        rules = state.rules
        if ctx.endpoint not in CACHED_ENDPOINTS:
            raise _Bypass(NOT_CACHEABLE)
        if not rules.enabled:
            raise _Bypass(DISABLED)
        fresh, no_store = directives(ctx.request.headers)
        if no_store:
            raise _Bypass(NO_STORE)
        body = await ctx.json()
        model = ctx.model
        if model is None or model not in self.models or not deterministic(ctx.endpoint, body):
            raise _Bypass(NOT_CACHEABLE)
        if ctx.stream and ctx.endpoint not in STREAMED_ENDPOINTS:
            raise _Bypass(NOT_CACHEABLE)
        identity = self.env.upstreams.identity(model)
        if identity is None:
            raise _Bypass(IDENTITY_UNKNOWN)
        scope = scope_of(ctx, rules.scope)
        key = cache_key(ctx.endpoint, model, identity, scope, body)
        if key is None:
            raise _Bypass(NOT_CACHEABLE)
        if self.similar is not None:
            state.probe = self.similar.probe(ctx.endpoint, model, identity, scope, body)
        return key, fresh

    async def _lookup_or_lead(
        self, ctx: RequestContext, state: Lookup, fresh: bool
    ) -> Reply | None:
        """A hit's answer, or None for a miss (tapped, to be stored). `fresh` (no-cache):
        no lookup and no waiting for another request; the answer is stored."""
        if not fresh:
            try:
                entry = await self._lookup(state)
            except StoreDown:
                self.metrics.bypass(ctx.endpoint, STORE_DOWN)
                return None
            reply = self._hit(ctx, state, entry)
            if reply is not None:
                return reply
        leader = self.inflight.lead(state.key)
        if leader is None:
            state.leads = True
        elif not fresh:
            reply = self._hit(ctx, state, await self.inflight.follow(leader, self.wait))
            if reply is not None:
                return reply
        state.result = MISS
        self.metrics.result(ctx.endpoint, MISS)
        if ctx.stream and ctx.endpoint in GENERATING:
            state.assembler = Assembler(ctx.endpoint, state.rules.max_entry_bytes)
            ctx.tap(state.assembler.feed)
        else:
            ctx.tap(state.keep)
        return None

    async def _lookup(self, state: Lookup) -> Entry | None:
        """The stored answer of the request's key or, after an exact miss with the semantic
        index on, that of the closest prompt of its partition (the one place a lookup
        happens; `_store` is the one place answers are indexed)."""
        assert self.store is not None, "start() runs before any request"
        entry = await self.store.get(state.key)
        if entry is not None or state.probe is None or self.similar is None:
            return entry
        found = await self.similar.find(state.probe, self.store)
        if found is None:
            return None
        entry, state.similarity = found
        return entry

    def _hit(self, ctx: RequestContext, state: Lookup, entry: Entry | None) -> Reply | None:
        """The answer of a hit; None for no entry, or one that cannot be replayed."""
        if entry is None:
            return None
        reply = Reply(200, entry.body)
        if ctx.stream and ctx.endpoint in GENERATING:
            replayed = replay(ctx.endpoint, entry.body, ctx.client_wants_usage)
            if replayed is None:
                return None
            reply = Reply(200, replayed, dict(_REPLAY_HEADERS), "text/event-stream")
        state.result, state.entry = HIT, entry
        # A copy: the entry is shared by every request it answers.
        ctx.cached, ctx.usage = True, dict(entry.usage) if entry.usage is not None else None
        self.metrics.result(ctx.endpoint, HIT)
        saved = self.metrics.saved.get(ctx.model or "")
        if saved is not None:
            saved.inc(entry.tokens())
        return reply

    async def on_response(self, ctx: RequestContext, headers: CIMultiDict[str]) -> None:
        state: Lookup | None = ctx.state.get(self.name)
        if state is None:
            return
        headers["X-Cache"] = state.result.upper()
        if state.entry is not None:
            headers["Age"] = str(state.entry.age())
            if state.similarity is not None:  # served for another, similar prompt
                headers["X-Cache-Similarity"] = f"{state.similarity:.6f}"

    async def on_complete(self, ctx: RequestContext) -> None:
        state: Lookup | None = ctx.state.get(self.name)
        if state is None or state.result != MISS:
            return
        entry = None
        try:
            entry = self._storable(ctx, state)
            if entry is not None:
                await self._store(state, entry)
        finally:
            if state.leads:
                self.inflight.finish(state.key, entry)

    def _storable(self, ctx: RequestContext, state: Lookup) -> Entry | None:
        """The entry to store, when the answer came whole and complete to a client still there."""
        if ctx.status != 200 or ctx.outcome != OK:
            return None
        body = state.body
        if state.assembler is not None:
            body = state.assembler.answer(ctx.usage) if ctx.delivered else None
        if body is None or len(body) > state.rules.max_entry_bytes:
            return None
        if answer_of(ctx.endpoint, body) is None:
            return None
        return Entry(body, ctx.usage)

    async def _store(self, state: Lookup, entry: Entry) -> None:
        assert self.store is not None, "start() runs before any request"
        evicted = getattr(self.store, "evictions", 0)
        try:
            size = await self.store.put(state.key, entry, state.rules.ttl_seconds)
        except StoreDown:
            self.metrics.redis_errors[CACHE_NOT_STORED].inc()
            return
        if size:
            self.metrics.stored.inc()
            self.metrics.stored_bytes.inc(size)
            if state.probe is not None and self.similar is not None:
                await self.similar.remember(state.probe, state.key)
        dropped = getattr(self.store, "evictions", 0) - evicted
        if dropped > 0:
            self.metrics.evictions.inc(dropped)


class _Bypass(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
