"""Fixtures of the rate-limit tests: a key prefix of their own on the shared Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.rate_limits import SHARED_REDIS, drop_keys, unique_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis; its keys are dropped afterwards."""
    value = unique_prefix()
    yield value
    drop_keys(SHARED_REDIS, value)


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    """A redis-py client of the shared Redis, to look at what the scripts wrote."""
    client = redis.Redis.from_url(SHARED_REDIS)
    yield client
    client.close()
