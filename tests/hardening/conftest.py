"""The hardening suite's Hypothesis profiles and its live gateway, one per test module.

`ci` (selected when CI=true, as `.ci/run` sets it) is reproducible: a fixed seed
(derandomize), no example database, so every run tries the same inputs; `dev` (the
default) draws new inputs each run and remembers failures in the local database.
Neither has a deadline: the machine is shared and timings say nothing about correctness.
The profile is loaded here, before the test modules are imported, so the
`@settings(max_examples=...)` of each test inherits it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

from tests.hardening.attack import Attacker
from tests.hardening.live import JWT_SECRET, JWT_SECRET_ENV, LiveGateway, captured_logs
from tests.hardening.served import ServedGateway

_COMMON = {
    "deadline": None,
    # Huge strings and 1,100-level bodies are drawn on purpose.
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", **_COMMON)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

G = TypeVar("G", bound=LiveGateway)


def _running(gateway: G) -> Iterator[G]:
    """`gateway` started with the JWT secret in its environment, stopped afterwards."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(JWT_SECRET_ENV, JWT_SECRET)
        gateway.start()
        try:
            yield gateway
        finally:
            gateway.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """The gateway, every policy on (request IDs, usage on SQLite, API keys and JWTs,
    rate limits on Redis), in front of the fake upstream, with every log line captured."""
    gateway = LiveGateway(tmp_path_factory.mktemp("live"))
    with captured_logs(gateway.lines):
        yield from _running(gateway)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    """The same gateway as a real `llama-gateway serve` process: its own HTTP server and
    logging set-up, its stderr kept for the checks (what aiohttp's parser answers and
    logs happens before the application sees a request)."""
    yield from _running(ServedGateway(tmp_path_factory.mktemp("served")))


@pytest.fixture(scope="module")
def attacker(live: LiveGateway) -> Attacker:
    return Attacker(live)
