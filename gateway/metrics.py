"""The core's metrics, in a registry per application (no process-wide globals).

Label values come from bounded sets only: configured model and tier names, status
classes, and fixed reason words. The core defines the metrics of every request, of the
upstreams, of policy reloads and of failing dependencies; a policy registers its own
through `PolicyEnv.metrics` (`counter`, `gauge`, `histogram`: see gateway.metricset) and
creates, at 0, the label sets that must exist from the start, so that dashboards and
alerts have data to work on before the first event.

The core records each request once, when it is over (`observe`), through children
resolved once per label combination: a request pays no `labels()` lookup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from gateway.context import DISCONNECTED, INTERNAL_ERROR, RequestContext
from gateway.endpoints import BY_NAME
from gateway.metricset import MetricSet
from gateway.variants import VariantCounter

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

NONE = "none"  # no model named (GET /v1/models), no tier (no auth policy), no status sent
UNKNOWN = "unknown"  # a model name that is not configured: never a label value of its own

# Seconds: the gateway's own time, outside the upstream.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1)
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def multiprocess_dir() -> str | None:
    """Where worker processes keep their samples, when the gateway runs several."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics(MetricSet):
    """The application's metrics: the core's own, and those its policies register."""

    def __init__(
        self,
        models: Iterable[str] = (),
        tiers: Iterable[str] = (),
        upstreams: Iterable[tuple[str, str]] = (),
    ) -> None:
        """`upstreams`: the configured (model, upstream URL) pairs, whose per-upstream
        token series exist at 0 from the start."""
        super().__init__()
        self.models = frozenset(models)
        self.tiers: frozenset[str] = frozenset()
        self._series: dict[tuple[str, str, int, str], _Series] = {}
        self._define_shared_metrics()
        self._define_outcome_metrics()
        self._define_timing_metrics()
        self._define_token_metrics()
        self._define_resource_metrics()
        self.set_tiers(tiers)
        self._by_upstream: dict[tuple[str, str], tuple[Any, Any]] = {}
        for model, url in upstreams:
            self._upstream_tokens(model, url)

    def _define_shared_metrics(self) -> None:
        self.policy_reloads = self.counter(
            "policy_reloads",
            "Policy document reloads by result (ok: swapped in; error: refused, old policy kept).",
            ("result",),
        )
        for result in ("ok", "error"):
            self.policy_reloads.labels(result)
        # One metric for every dependency any policy calls, so that one alert and one panel
        # cover them all; each policy creates its own (dependency, action) pairs.
        self.dependency_errors = self.counter(
            "dependency_errors",
            "Failed calls to a dependency (redis, postgres, sqlite, disk), by dependency and by "
            "what the gateway did about it (fail_open, fail_closed, settle_lost, retry).",
            ("dependency", "action"),
        )

    def _define_outcome_metrics(self) -> None:
        self.requests = self.counter(
            "requests",
            "Requests served on the OpenAI endpoints, by model, endpoint, status class "
            "(2xx, 4xx, 5xx; none when the client left before an answer) and tier.",
            ("model", "endpoint", "status", "tier"),
        )
        self.internal_errors = self.counter(
            "internal_errors",
            "Requests the gateway itself failed on (answered 500 internal_error), by route.",
            ("route",),
        )
        self.client_disconnects = self.counter(
            "client_disconnects",
            "Requests whose client hung up before the answer was complete.",
            ("model", "endpoint"),
        )
        self.variants = VariantCounter(self)  # the requests naming an experiment

    def _define_timing_metrics(self) -> None:
        by_model = ("model", "endpoint")
        self.duration = self.histogram(
            "request_duration_seconds",
            "Time from receiving a request to the end of its answer.",
            by_model,
        )
        self.ttft = self.histogram(
            "time_to_first_token_seconds",
            "Streamed answers: time from receiving the request to the first event relayed.",
            by_model,
        )
        self.upstream_duration = self.histogram(
            "upstream_duration_seconds",
            "Time spent on the upstream call: from sending the request to its last byte.",
            by_model,
        )
        self.overhead = self.histogram(
            "overhead_seconds",
            "Gateway overhead of requests relayed upstream: total time minus upstream time "
            "(policies, parsing, routing, writing the answer).",
            by_model,
            OVERHEAD_BUCKETS,
        )

    def _define_token_metrics(self) -> None:
        self.tokens = self.counter(
            "tokens",
            "Tokens reported by the upstream, by model, tier and type (prompt, completion).",
            ("model", "tier", "type"),
        )
        self.upstream_prompt_tokens = self.counter(
            "upstream_prompt_tokens",
            "Prompt tokens of the answers relayed, as the upstream that served each reported "
            "them, by model and upstream.",
            ("model", "upstream"),
        )
        self.prompt_tokens_cached = self.counter(
            "prompt_tokens_cached",
            "Prompt tokens the upstream took from its prompt (KV) cache instead of evaluating "
            "them, as it reported them (cached_tokens, or llama.cpp's timings.cache_n), by "
            "model and upstream.",
            ("model", "upstream"),
        )

    def _define_resource_metrics(self) -> None:
        self.upstream_up = self.gauge(
            "upstream_up",
            "1 while an upstream llama-server answers its health probe, 0 while it is down "
            "or loading its model.",
            ("upstream", "model"),
            mode="livemax",
        )
        self.upstream_in_flight = self.gauge(
            "upstream_in_flight",
            "Requests being answered by each upstream right now.",
            ("upstream", "model"),
        )
        self.upstream_circuit = self.gauge(
            "upstream_circuit_state",
            "Each upstream's circuit breaker: 0 closed, 1 half-open (one trial request may "
            "go), 2 open (no traffic until its cool-down ends).",
            ("upstream", "model"),
            mode="livemax",
        )
        self.queue_depth = self.gauge(
            "queue_depth",
            "Requests waiting for an upstream slot of each model right now.",
            ("model",),
        )
        self.queue_seconds = self.histogram(
            "queue_seconds",
            "Requests that waited for an upstream slot: how long, by model and tier (served, "
            "answered 503 server_busy, or left by their client).",
            ("model", "tier"),
        )
        self.upstream_retries = self.counter(
            "upstream_retries",
            "Attempts made again on another upstream after one failed before the answer "
            "started, by model and by why the previous attempt failed (connect, reset, "
            "timeout, loading, server_error).",
            ("model", "reason"),
        )
        self.prefix_routes = self.counter(
            "prefix_routes",
            "Requests of the models routed by prefix, by how their upstream was chosen: match "
            "(it was sent the longest part of the prompt), anchor (no part was matched: the "
            "rendezvous hash of the first block), load (the load guard overrode either).",
            ("model", "route"),
        )

    def set_tiers(self, tiers: Iterable[str]) -> None:
        """The tier names in force (after each policy load): the only tier label values."""
        self.tiers = frozenset(tiers)

    def observe(self, ctx: RequestContext) -> None:
        """Record one finished request (called once, from the relay)."""
        model = ctx.model
        if model is None:
            model = NONE
        elif model not in self.models and model not in self.variants.names:
            model = UNKNOWN  # (an experiment's name stays: refused before its variant was chosen)
        tier = ctx.tier if ctx.tier in self.tiers else NONE
        status = ctx.status // 100
        if ctx.variant is not None:
            self.variants.count(ctx.variant, STATUS_CLASSES.get(status, NONE))
        key = (model, ctx.endpoint, status, tier)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self, *key)
        series.requests.inc()
        finished = ctx.finished or ctx.started
        total = finished - ctx.started
        series.duration.observe(total)
        upstream = ctx.upstream_seconds
        if upstream is not None:
            series.relayed(ctx, total, upstream)
            usage, url = ctx.usage, ctx.upstream
            if usage is not None and url is not None:
                self._count_prompt(model, url, usage.get("prompt_tokens"), ctx.cached_tokens)
        if ctx.outcome == DISCONNECTED:
            series.disconnects.inc()
        elif ctx.outcome == INTERNAL_ERROR:
            # The route, not the path: `/v1/models/{model}` takes any name.
            self.internal_errors.labels(BY_NAME[ctx.endpoint].path).inc()

    def _count_prompt(self, model: str, url: str, prompt: Any, cached: int | None) -> None:
        """The prompt tokens of a relayed answer, and those its upstream had cached."""
        children = self._by_upstream.get((model, url))
        if children is None:  # an upstream not given at start (tests build bare Metrics)
            children = self._upstream_tokens(model, url)
        if type(prompt) is int and prompt > 0:
            children[0].inc(prompt)
        if cached:
            children[1].inc(cached)

    def _upstream_tokens(self, model: str, url: str) -> tuple[Any, Any]:
        children = (
            self.upstream_prompt_tokens.labels(model, url),
            self.prompt_tokens_cached.labels(model, url),
        )
        self._by_upstream[model, url] = children
        return children


class _Series:
    """The children of one (model, endpoint, status class, tier) combination.

    Those of relayed requests are made on first use: a combination that never reaches an
    upstream (a 401, an unknown model) leaves no empty series behind.
    """

    __slots__ = (
        "completion_tokens",
        "disconnects",
        "duration",
        "key",
        "metrics",
        "overhead",
        "prompt_tokens",
        "requests",
        "ttft",
        "upstream",
    )

    def __init__(self, m: Metrics, model: str, endpoint: str, status: int, tier: str) -> None:
        self.metrics, self.key = m, (model, endpoint, tier)
        self.requests = m.requests.labels(model, endpoint, STATUS_CLASSES.get(status, NONE), tier)
        self.duration = m.duration.labels(model, endpoint)
        self.disconnects = m.client_disconnects.labels(model, endpoint)
        self.upstream: Any = None
        self.overhead: Any = None
        self.ttft: Any = None
        self.prompt_tokens: Any = None
        self.completion_tokens: Any = None

    def relayed(self, ctx: RequestContext, total: float, upstream: float) -> None:
        if self.upstream is None:
            model, endpoint, tier = self.key
            m = self.metrics
            self.upstream = m.upstream_duration.labels(model, endpoint)
            self.overhead = m.overhead.labels(model, endpoint)
            self.prompt_tokens = m.tokens.labels(model, tier, "prompt")
            self.completion_tokens = m.tokens.labels(model, tier, "completion")
        self.upstream.observe(upstream)
        self.overhead.observe(max(total - upstream, 0.0))
        if ctx.stream and ctx.first_byte_at is not None and ctx.status < 400:
            if self.ttft is None:
                self.ttft = self.metrics.ttft.labels(*self.key[:2])
            self.ttft.observe(ctx.first_byte_at - ctx.started)
        usage = ctx.usage
        if usage is not None:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if type(prompt) is int and prompt > 0:
                self.prompt_tokens.inc(prompt)
            if type(completion) is int and completion > 0:
                self.completion_tokens.inc(completion)
