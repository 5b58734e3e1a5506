"""Where the gateway keeps its state (`storage:` of the configuration): PostgreSQL or the
embedded SQLite file for API keys and usage, Redis (one server or a cluster) for rate
limits, leases and the cache, and the private data directory."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from gateway.db import pool_options
from gateway.private import private_dir
from gateway.redis_cluster import cluster_seeds, is_cluster
from gateway.settings import PolicySettings

SQLITE_FILE = "gateway.db"


def postgres_url(url: str | None) -> str | None:
    """A PostgreSQL URL, or None for the embedded SQLite store; ValueError for another kind."""
    if not url:
        return None
    if not re.match(r"^postgres(ql)?://", url):
        raise ValueError("must be a postgresql:// URL (or empty for the embedded store)")
    pool_options(url)  # `?pgbouncer=` takes true or false
    return url


def redis_url(url: str | None) -> str | None:
    """A Redis URL (one server, or seed nodes of a cluster), or None; ValueError otherwise."""
    if not url:
        return None
    if is_cluster(url):
        cluster_seeds(url)  # ValueError: what is wrong with it
    elif not re.match(r"^(redis|rediss|unix)://", url):
        raise ValueError(
            "must be a redis://, rediss:// or unix:// URL, or redis+cluster://host:port,..."
            " for a Redis Cluster (or empty to keep limits in process)"
        )
    return url


class StorageConfig(PolicySettings):
    # PostgreSQL for API keys (and usage); without it an embedded SQLite file is used.
    database_url: str | None = None
    data_dir: str = "~/.local/share/llama-gateway"
    # Redis (one server, or a cluster: redis+cluster://host:port,host:port) for rate
    # limits, leases and the cache; without it they are kept in process.
    redis_url: str | None = None
    # Every Redis call is bounded by this, connecting included; then the policy's
    # failure mode decides.
    redis_timeout_seconds: float = Field(0.25, gt=0, le=10)

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        return redis_url(url)

    @field_validator("database_url")
    @classmethod
    def _dsn(cls, url: str | None) -> str | None:
        return postgres_url(url)

    @property
    def data_path(self) -> Path:
        """The data directory, made private (`private_dir`) before anything is put in it:
        it holds API key hashes, usage by subject and the journal of usage rows."""
        return private_dir(Path(self.data_dir).expanduser())

    @property
    def sqlite_path(self) -> Path:
        """The embedded database (API keys, usage, the schema's migrations) without
        `database_url`; in the data directory, made private."""
        return self.data_path / SQLITE_FILE
