"""The exact response cache: a deterministic request's answer, stored once, served to the
same scope again without calling the upstream.

`on_request` decides (cacheable? `Cache-Control`? what serves the model?), looks the key
up and answers a hit itself, as JSON or as SSE; identical misses in flight at once wait
for the first (`policies.cache.coalesce`). A miss it may store taps the answer on its
way to the client, and `on_complete` stores it when it came whole, from a client still
there. `on_response` puts `X-Cache` (and `Age` on hits) on every answer it saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict

from gateway.context import OK, Reply, RequestContext
from gateway.endpoints import GENERATING
from gateway.errors import GatewayError
from gateway.policy import Check, Policy, PolicyEnv
from gateway.redis_client import RedisClient
from gateway.streaming import STREAM_HEADERS
from policies.cache.assemble import Assembler
from policies.cache.coalesce import InFlight
from policies.cache.control import directives
from policies.cache.entry import Entry, answer_of
from policies.cache.key import CACHED_ENDPOINTS, cache_key, deterministic, scope_of
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
from policies.cache.settings import CacheSettings, Rules
from policies.cache.store import MemoryStore, RedisStore, Store, StoreDown

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
        self.inflight = InFlight()

    @classmethod
    def problems(cls, settings: CacheSettings, env: PolicyEnv) -> list[str]:
        return [
            f"tiers.{name}: unknown tier {name!r}; tiers are {sorted(env.tiers)}"
            for name in settings.tiers
            if name not in env.tiers
        ]

    async def start(self) -> None:
        resources, storage = self.env.resources, self.env.config.storage
        url = self.settings.redis_url or storage.redis_url
        if url is None:
            memory = await resources.get("cache.memory", _memory_store, _nothing)
            memory.max_bytes = self.settings.memory_max_bytes
            self.store = memory
            self.env.metrics.track(self.metrics.memory_bytes, lambda: memory.bytes)
            self.env.metrics.track(self.metrics.memory_entries, lambda: len(memory))
            return
        # The one connection of the process when it is the gateway's Redis (rate limits
        # share it); a client of its own for a Redis of the cache's own.
        name = "redis" if url == storage.redis_url else f"cache.redis.{_digest(url)}"
        client = await resources.get(name, lambda: _client(url), _close)
        self.env.metrics.track(self.metrics.memory_bytes, _zero)
        self.env.metrics.track(self.metrics.memory_entries, _zero)
        where = url.rpartition("@")[2]  # no credentials in logs
        self.store = RedisStore(
            client, storage.redis_timeout_seconds, self.settings.key_prefix, where
        )

    async def readiness(self) -> Mapping[str, Check]:
        if not isinstance(self.store, RedisStore):
            return {}
        # Without its Redis the gateway serves uncached: report, stay in rotation.
        return {"cache:redis": Check(await self.store.ping(), required=False)}

    async def on_request(self, ctx: RequestContext) -> Reply | None:
        rules = self.rules.get(ctx.tier, self.default) if ctx.tier else self.default
        state = ctx.state[self.name] = Lookup(BYPASS, rules)
        try:
            key, fresh = await self._key(ctx, rules)
        except _Bypass as bypass:
            self.metrics.bypass(ctx.endpoint, bypass.reason)
            return None
        except GatewayError:  # an unreadable body, refused with a 400
            self.metrics.bypass(ctx.endpoint, NOT_CACHEABLE)
            raise
        state.key = key
        return await self._lookup_or_lead(ctx, state, fresh)

    async def _key(self, ctx: RequestContext, rules: Rules) -> tuple[str, bool]:
        """The request's key and whether it asks for a fresh answer (`no-cache`);
        `_Bypass` when it is not to be cached. Cheap until the request is known to be
        cacheable: a few lookups, no canonical form, no hash."""
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
        identity = self.env.upstreams.identity(model)
        if identity is None:
            raise _Bypass(IDENTITY_UNKNOWN)
        key = cache_key(ctx.endpoint, model, identity, scope_of(ctx, rules.scope), body)
        if key is None:
            raise _Bypass(NOT_CACHEABLE)
        return key, fresh

    async def _lookup_or_lead(
        self, ctx: RequestContext, state: Lookup, fresh: bool
    ) -> Reply | None:
        """A hit's answer, or None for a miss (tapped, to be stored). `fresh` (no-cache):
        no lookup and no waiting for another request; the answer is stored."""
        if not fresh:
            try:
                entry = await self._lookup(ctx, state.key)
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

    async def _lookup(self, ctx: RequestContext, key: str) -> Entry | None:
        """The stored answer of `key`: the one place a lookup happens. A further kind of
        lookup (an exact miss answered with another key's entry, found from the request)
        goes here, as the matching indexing goes in `_store`."""
        assert self.store is not None, "start() runs before any request"
        return await self.store.get(key)

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
        dropped = getattr(self.store, "evictions", 0) - evicted
        if dropped > 0:
            self.metrics.evictions.inc(dropped)


class _Bypass(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


async def _memory_store() -> MemoryStore:
    return MemoryStore(0)


async def _client(url: str) -> RedisClient:
    return RedisClient(url)


async def _close(client: RedisClient) -> None:
    await client.close()


def _zero() -> float:
    return 0.0


async def _nothing(_: Any) -> None:
    return None
