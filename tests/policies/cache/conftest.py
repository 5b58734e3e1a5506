"""Fixtures of the cache tests: a key prefix of their own on the shared Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.caches import unique_cache_prefix
from tests.support.rate_limits import SHARED_REDIS, drop_keys


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis (for the cache and rate limits alike); its
    keys are dropped afterwards."""
    value = unique_cache_prefix()
    yield value
    drop_keys(SHARED_REDIS, value)
