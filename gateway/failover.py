"""Failover: after an attempt failed before any byte reached the client, the request is
made again on another usable upstream of its model (tenacity: exponential backoff with
full jitter, bounded attempts and time).

Only the failures `upstream.retry` names are retried (connect errors, resets before the
head and llama-server's 503 always; the first-byte timeout and other 5xx when asked).
The first attempt runs in the relay without any of this: a request that succeeds at once
pays for none of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.resilience import (
    CONNECT,
    LOADING,
    REASONS,
    RESET,
    SERVER_ERROR,
    TIMEOUT,
    Failure,
    RetryConfig,
)
from gateway.upstreams import Pool, Upstream

T = TypeVar("T")


class _NoneLeft(Exception):
    """No usable upstream is left to try: the last failure is the answer."""


class _Tries:
    """The last failure of a request's attempts, and the upstream it failed on."""

    __slots__ = ("failure", "replayed", "upstream")

    def __init__(self, failure: Failure, upstream: Upstream) -> None:
        self.failure, self.upstream, self.replayed = failure, upstream, False


class Failover:
    def __init__(self, config: RetryConfig, pool: Pool, metrics: Metrics) -> None:
        self.config = config
        self.pool = pool
        retried = {CONNECT, RESET, LOADING}
        if config.on_timeout:
            retried.add(TIMEOUT)
        if config.on_server_error:
            retried.add(SERVER_ERROR)
        self.retried = frozenset(retried)
        # Made at start-up, at 0, for every configured model: a retry pays no lookup.
        self.counters = {
            (model, reason): metrics.upstream_retries.labels(model, reason)
            for model in pool.by_model
            for reason in REASONS
        }

    def _retrying(self) -> AsyncRetrying:
        config = self.config
        return AsyncRetrying(
            stop=stop_after_attempt(config.attempts) | stop_before_delay(config.total_seconds),
            wait=wait_random_exponential(
                multiplier=config.backoff_seconds, max=config.backoff_max_seconds
            ),
            retry=retry_if_exception(lambda exc: getattr(exc, "reason", None) in self.retried),
            reraise=True,
        )

    async def retry(
        self,
        ctx: RequestContext,
        first: Failure,
        previous: Upstream,
        attempt: Callable[[Upstream], Awaitable[T]],
    ) -> T:
        """Try again after `first` failed on `previous`; raises the last Failure if no
        attempt succeeds."""
        if self.config.attempts == 1 or first.reason not in self.retried:
            raise first
        tries = _Tries(first, previous)

        async def again() -> T:
            if tries.replayed is False:
                tries.replayed = True
                raise first  # the attempt the relay made: tenacity counts it and waits after it
            model = str(ctx.model)
            try:
                upstream = self.pool.pick(model, avoid=tries.upstream)
            except GatewayError as exc:  # none usable any more (down, open circuits)
                raise _NoneLeft from exc
            self.counters[(model, tries.failure.reason)].inc()
            try:
                return await attempt(upstream)
            except Failure as failure:
                tries.failure, tries.upstream = failure, upstream
                raise

        try:
            return await self._retrying()(again)
        except _NoneLeft:
            raise tries.failure from None
