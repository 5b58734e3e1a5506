"""Prometheus metrics, in a registry per application (no process-wide globals).

Label values come from bounded sets only: configured model and tier names, status
classes, and fixed reason words. Policies reach the metrics through `PolicyEnv.metrics`.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

NAMESPACE = "llama_gateway"


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.policy_reloads = Counter(
            "llama_gateway_policy_reloads",
            "Policy document reloads by result (ok: swapped in; error: refused, old policy kept).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)
        self.auth_failures = Counter(
            "llama_gateway_auth_failures",
            "Requests refused by the auth policy, by reason "
            "(missing, invalid_key, invalid_token, forbidden, unavailable).",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "llama_gateway_rate_limited",
            "Requests refused by the rate-limit policy, by tier and by the limit that refused "
            "them (requests, tokens, concurrency, quota_day, quota_month).",
            ["tier", "limit"],
            registry=registry,
        )
        self.dependency_errors = Counter(
            "llama_gateway_dependency_errors",
            "Failed calls to a dependency (redis, postgres, sqlite), by dependency and by what "
            "the gateway did about it (fail_open, fail_closed, journal, retry).",
            ["dependency", "action"],
            registry=registry,
        )
        self.usage_queue_depth = Gauge(
            "llama_gateway_usage_queue_depth",
            "Usage records waiting in memory for the background writer.",
            registry=registry,
        )
        self.usage_journal_bytes = Gauge(
            "llama_gateway_usage_journal_bytes",
            "Size of the local usage journal: records not yet in the database.",
            registry=registry,
        )
        self.usage_records = Counter(
            "llama_gateway_usage_records",
            "Usage records by where they went (database, journal, replayed).",
            ["destination"],
            registry=registry,
        )

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
