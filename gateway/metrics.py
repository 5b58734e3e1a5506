"""Prometheus metrics, in a registry per application (no process-wide globals)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.policy_reloads = Counter(
            "llama_gateway_policy_reloads",
            "Policy document reloads by result (ok: swapped in; error: refused, old policy kept).",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
