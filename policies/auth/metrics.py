"""The auth policy's metric: requests it refused, by reason."""

from __future__ import annotations

from prometheus_client import Counter

from gateway.metrics import Metrics

# What `_failure_reason` in policies.auth.policy can answer.
REASONS = ("missing", "invalid_key", "invalid_token", "forbidden", "unavailable")


def failure_counters(metrics: Metrics) -> dict[str, Counter]:
    """The counter of each reason, every one of them at 0 from the start."""
    failures = metrics.counter(
        "auth_failures",
        f"Requests refused by the auth policy, by reason ({', '.join(REASONS)}).",
        ("reason",),
    )
    return {reason: failures.labels(reason) for reason in REASONS}
