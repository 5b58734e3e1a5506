"""Where the buckets live: Redis, or an embedded store running the very same Lua scripts
(run by `gateway.redis_scripts.Backend`)."""

from __future__ import annotations

import logging

from gateway.redis_cluster import open_client as open_redis
from gateway.redis_scripts import Backend, Client, Script, Unavailable
from gateway.storage import StorageConfig
from policies.rate_limit.embedded import Embedded

__all__ = ["ADMIT", "SETTLE", "TOUCH", "Backend", "Unavailable", "backend", "open_client"]

log = logging.getLogger("policies.rate_limit")

ADMIT = Script("policies.rate_limit", "admit")
SETTLE = Script("policies.rate_limit", "settle")
TOUCH = Script("policies.rate_limit", "touch")


def open_client(storage: StorageConfig) -> Client:
    """The shared client for `storage.redis_url` (one Redis or a cluster), or the embedded
    store without one."""
    if storage.redis_url is None:
        return Embedded()
    return open_redis(storage.redis_url)


def backend(client: Client, storage: StorageConfig, where: str) -> Backend:
    return Backend(
        client,
        storage.redis_timeout_seconds,
        where,
        (ADMIT, SETTLE, TOUCH),
        log,
        "rate limits follow their failure_mode",
    )
