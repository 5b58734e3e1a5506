"""The cache policy's settings: a default and per-tier rules, the scope, the stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from gateway.policy import PolicySettings
from gateway.storage import redis_url
from policies.cache.semantic_settings import SemanticSettings

Scope = Literal["user", "tier", "global"]
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Rules:
    """The rules in force for one tier's requests, resolved once per policy load."""

    enabled: bool
    ttl_seconds: float
    max_entry_bytes: int
    scope: Scope


class TierCache(PolicySettings):
    """What is cached for one tier. In `tiers`, a field left out takes `default`'s value."""

    enabled: bool = True
    ttl_seconds: float = Field(3600.0, gt=0, le=366 * 86400)
    # The stored (JSON) form of one answer; a longer answer is not stored.
    max_entry_bytes: int = Field(256 * 1024, gt=0, le=64 * MIB)
    # None: the policy's `scope`.
    scope: Scope | None = None


class CacheSettings(PolicySettings):
    # Who shares stored answers: each user alone, every caller of a tier, or everyone.
    scope: Scope = "user"
    default: TierCache = Field(default_factory=TierCache)
    tiers: dict[str, TierCache] = Field(default_factory=dict)
    # The in-process store (used without Redis): its bound in bytes, least recently used out.
    memory_max_bytes: int = Field(64 * MIB, ge=0)
    # How long identical misses wait for the one in flight before going upstream themselves.
    coalesce_wait_seconds: float = Field(30.0, ge=0, le=3600)
    # A Redis of the cache's own (None: storage.redis_url; neither: the in-process store).
    redis_url: str | None = None
    key_prefix: str = Field("llgw:cache", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    # Opt-in: after an exact miss, serve the answer of a similar prompt (`semantic:` block).
    semantic: SemanticSettings | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        return redis_url(url)

    def rules(self, tier: str | None) -> Rules:
        """The rules of `tier` (None: of requests without one): its own entry over
        `default`, field by field, and the policy's scope where neither names one."""
        rules = self.default
        own = self.tiers.get(tier) if tier is not None else None
        if own is not None:
            rules = rules.model_copy(update=own.model_dump(exclude_unset=True))
        scope = rules.scope or self.scope
        return Rules(rules.enabled, rules.ttl_seconds, rules.max_entry_bytes, scope)
