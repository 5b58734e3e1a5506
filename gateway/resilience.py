"""Settings of failover and of the per-upstream circuit breaker (`upstream.retry`,
`upstream.breaker`), and the failed attempt the relay hands to `gateway.failover`.

An attempt fails *before any byte reached the client*: only then may it be made again on
another replica. A failure after that point (a stream that breaks off) is never retried.
"""

from __future__ import annotations

import aiohttp
from pydantic import Field

from gateway.errors import GatewayError
from gateway.settings import PolicySettings, PositiveFloat

# Why an attempt failed: the `reason` label of `llama_gateway_upstream_retries_total`.
CONNECT = "connect"  # refused, unreachable, or the connect timed out
RESET = "reset"  # the connection broke before the response head
TIMEOUT = "timeout"  # no response head within `upstream.first_byte_timeout`
LOADING = "loading"  # 503: llama-server is loading its model
SERVER_ERROR = "server_error"  # another 5xx answered before any byte was relayed
REASONS = (CONNECT, RESET, TIMEOUT, LOADING, SERVER_ERROR)


class RetryConfig(PolicySettings):
    # Attempts in all, the first included; 1 turns failover off.
    attempts: int = Field(3, ge=1, le=10)
    # No retry starts once this long has passed since the first attempt failed.
    total_seconds: PositiveFloat = 10.0
    # Exponential backoff with full jitter between attempts: the first wait is at most
    # `backoff_seconds`, each next one at most twice the last, never over `backoff_max_seconds`.
    backoff_seconds: PositiveFloat = 0.05
    backoff_max_seconds: PositiveFloat = 1.0
    # Off: an upstream that took first_byte_timeout without answering is most likely busy
    # generating; sending the prompt to another replica doubles the load at the worst time.
    on_timeout: bool = False
    # Off: a 500 from llama-server is usually about the request (a template or grammar it
    # cannot handle), and another replica answers it the same. Its 503 (loading) always is.
    on_server_error: bool = False


class BreakerConfig(PolicySettings):
    enabled: bool = True
    # Consecutive failed calls that open an upstream's circuit.
    failures: int = Field(5, ge=1)
    # When set, the circuit also opens once this share of the last `window` calls failed.
    failure_ratio: float | None = Field(None, gt=0, le=1)
    window: int = Field(20, ge=2)
    # How long an open circuit sends no traffic before one trial request may go.
    cooldown_seconds: PositiveFloat = 10.0


class Failure(Exception):
    """An attempt that failed before any byte reached the client.

    `error` is the gateway's answer if no attempt succeeds; `answer` (status, content type,
    body) the upstream's own, relayed as it was instead when the upstream did answer."""

    def __init__(
        self, reason: str, error: GatewayError, answer: tuple[int, str, bytes] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.answer = answer


def reason_of(exc: BaseException) -> str:
    """The retry reason of a call that broke before its response head."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return CONNECT
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    return RESET


def status_reason(status: int) -> str:
    return LOADING if status == 503 else SERVER_ERROR


class AdmissionConfig(PolicySettings):
    # Requests beyond an upstream's slots wait in the gateway, by tier priority, instead of
    # in llama-server's own unbounded queue; only upstreams whose slots are known (from
    # `/props` `total_slots`, or `models.<name>.slots`) are bounded.
    enabled: bool = True
    # Requests sent to an upstream beyond its slots (llama-server queues them itself).
    overcommit: int = Field(0, ge=0)
    # Requests waiting per model; the next one is answered 503 server_busy.
    max_queue: int = Field(256, ge=0)
    # With `storage.redis_url`, the bound holds across every gateway replica (and worker
    # process) sharing that Redis: a request holds a lease on its upstream's slot there
    # while it runs (`gateway.leases`). Off: each process bounds only its own requests.
    across_replicas: bool = True
    # A lease runs out this long after it was last renewed (every third of it while its
    # request runs): a replica that dies frees its slots within this time.
    lease_seconds: PositiveFloat = 15.0
    # While requests wait here for slots that other replicas hold, how often this replica
    # asks Redis for one.
    poll_seconds: float = Field(0.05, ge=0.005, le=5)
    # Prefix of the Redis keys of the leases: replicas that share slots share it.
    key_prefix: str = "llama-gateway:"
