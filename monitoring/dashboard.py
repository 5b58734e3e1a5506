"""The llama-gateway Grafana dashboard, as code (grafana-foundation-sdk).

    python monitoring/dashboard.py           # writes grafana/dashboards/llama-gateway.json
    python monitoring/dashboard.py --check   # exit 1 if the committed JSON differs

Panels are declared as data below (`ROWS`); the SDK's typed builders turn them into a
dashboard Grafana accepts, so the JSON is valid by construction. Every query uses the
`$__rate_interval` Grafana variable only; tests/monitoring/test_live_prometheus.py runs
each one against a real Prometheus scraping a live gateway.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.models.dashboard import DataSourceRef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from monitoring.dashboard_kit import (
    Panel,
    encode,
    framed,
    main,
    targets,
    timeseries,
    with_rows,
)

OUTPUT = Path(__file__).parent / "grafana" / "dashboards" / "llama-gateway.json"
UID = "llama-gateway"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
R = "[$__rate_interval]"
GW = 'job="llama-gateway"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    stat: bool = False
    width: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def quantiles(metric: str, by: str, selector: str = "") -> tuple[Query, ...]:
    sel = f"{{{selector}}}" if selector else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{sel}{R})))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.99)
    )


TRAFFIC = (
    PanelSpec(
        "Requests per second by status",
        "reqps",
        (Query(f"sum by (status) (rate(llama_gateway_requests_total{R}))", "{{status}}"),),
        "Requests on the OpenAI endpoints by status class; none = the client left first.",
    ),
    PanelSpec(
        "Requests per second by model and endpoint",
        "reqps",
        (
            Query(
                f"sum by (model, endpoint) (rate(llama_gateway_requests_total{R}))",
                "{{model}} {{endpoint}}",
            ),
        ),
    ),
    PanelSpec(
        "Error ratio (5xx)",
        "percentunit",
        (
            Query(
                f'(sum(rate(llama_gateway_requests_total{{status="5xx"}}{R})) or vector(0))'
                f" / sum(rate(llama_gateway_requests_total{R}))",
                "5xx",
            ),
            Query(
                f"sum(rate(llama_gateway_client_disconnects_total{R}))"
                f" / sum(rate(llama_gateway_requests_total{R}))",
                "client hung up",
            ),
        ),
        "Share of requests answered 5xx (upstream errors, timeouts) and of clients that "
        "hung up before the end of their answer.",
    ),
)

LATENCY = (
    PanelSpec(
        "Request duration",
        "s",
        quantiles("llama_gateway_request_duration_seconds", "endpoint", 'endpoint!="models"'),
        "From receiving the request to the end of its answer.",
    ),
    PanelSpec(
        "Time to first token",
        "s",
        quantiles("llama_gateway_time_to_first_token_seconds", "model"),
        "Streamed answers: from receiving the request to the first event relayed.",
    ),
    PanelSpec(
        "Gateway overhead",
        "s",
        quantiles("llama_gateway_overhead_seconds", "endpoint"),
        "Time spent outside the upstream (policies, parsing, routing, writing the answer).",
    ),
    PanelSpec(
        "Upstream duration",
        "s",
        quantiles("llama_gateway_upstream_duration_seconds", "model"),
        "From sending the request upstream to its last byte.",
    ),
    PanelSpec(
        "Tokens per second by model and tier",
        "short",
        (
            Query(
                f"sum by (model, tier, type) (rate(llama_gateway_tokens_total{R}))",
                "{{model}} {{tier}} {{type}}",
            ),
        ),
        "Prompt and completion tokens as reported by llama-server.",
    ),
    PanelSpec(
        "llama-server tokens per second",
        "short",
        (
            Query(f"sum by (instance) (rate(llamacpp:tokens_predicted_total{R}))", "{{instance}}"),
            Query(
                f"sum by (instance) (rate(llamacpp:prompt_tokens_total{R}))",
                "{{instance}} prompt",
            ),
        ),
        "From llama-server's own /metrics (started with --metrics).",
    ),
)

POLICIES = (
    PanelSpec(
        "Rate-limited requests per second",
        "reqps",
        (
            Query(
                f"sum by (tier, limit) (rate(llama_gateway_rate_limited_total{R}))",
                "{{tier}} {{limit}}",
            ),
        ),
        "429 answers by tier and by the limit that refused them (quota_* = long-window quotas).",
    ),
    PanelSpec(
        "Auth failures per second",
        "reqps",
        (Query(f"sum by (reason) (rate(llama_gateway_auth_failures_total{R}))", "{{reason}}"),),
    ),
    PanelSpec(
        "Policy reloads (last hour)",
        "short",
        (
            Query(
                "sum by (result) (increase(llama_gateway_policy_reloads_total[1h]))", "{{result}}"
            ),
        ),
        "error = an invalid policy file was refused and the previous policy kept.",
        stat=True,
    ),
)

UPSTREAMS = (
    PanelSpec(
        "Upstream health",
        "bool_yes_no",
        (Query("max by (upstream, model) (llama_gateway_upstream_up)", "{{model}} {{upstream}}"),),
        "1 while an upstream answers its /health probe; 0 while down or loading a model.",
    ),
    PanelSpec(
        "In-flight requests per upstream",
        "short",
        (Query("sum by (upstream) (llama_gateway_upstream_in_flight)", "{{upstream}}"),),
    ),
    PanelSpec(
        "llama-server slots",
        "short",
        (
            Query("sum by (instance) (llamacpp:requests_processing)", "{{instance}} processing"),
            Query("sum by (instance) (llamacpp:requests_deferred)", "{{instance}} waiting"),
        ),
        "Requests being processed and waiting for a free slot in each llama-server.",
    ),
    PanelSpec(
        "Prompt tokens from cache, by upstream",
        "percentunit",
        (
            Query(
                f"sum by (upstream) (rate(llama_gateway_prompt_tokens_cached_total{R}))"
                f" / sum by (upstream) (rate(llama_gateway_upstream_prompt_tokens_total{R}))",
                "{{upstream}}",
            ),
        ),
        "Share of the prompt tokens each upstream took from its prompt (KV) cache instead of "
        "evaluating them, as its answers reported: prompt time saved.",
    ),
)

USAGE = (
    PanelSpec(
        "Usage pipeline backlog",
        "short",
        (Query("sum by (instance) (llama_gateway_usage_queue_depth)", "{{instance}} queue"),),
        "Usage records waiting in memory for the background writer.",
    ),
    PanelSpec(
        "Usage journal size",
        "bytes",
        (Query("sum by (instance) (llama_gateway_usage_journal_bytes)", "{{instance}} journal"),),
        "Records kept on local disk while the database is unreachable; replayed later.",
    ),
    PanelSpec(
        "Usage records per second",
        "short",
        (
            Query(
                f"sum by (destination) (rate(llama_gateway_usage_records_total{R}))",
                "{{destination}}",
            ),
        ),
    ),
    PanelSpec(
        "Dependency errors per second",
        "short",
        (
            Query(
                f"sum by (dependency, action) (rate(llama_gateway_dependency_errors_total{R}))",
                "{{dependency}} {{action}}",
            ),
        ),
        "Failed calls to Redis, PostgreSQL or SQLite, and what the gateway did about them.",
        width=16,
    ),
)

CACHE_LOOKUPS = "llama_gateway_cache_requests_total"
CACHE = (
    PanelSpec(
        "Cache lookups per second",
        "reqps",
        (
            Query(
                f"sum by (endpoint, result) (rate({CACHE_LOOKUPS}{R}))",
                "{{endpoint}} {{result}}",
            ),
        ),
        "Requests the cache policy saw: hit (answered from the cache), miss (sent upstream, "
        "stored if it could be), bypass (not cacheable, Cache-Control, or the cache unavailable).",
    ),
    PanelSpec(
        "Cache hit ratio",
        "percentunit",
        (
            Query(
                f'sum by (endpoint) (rate({CACHE_LOOKUPS}{{result="hit"}}{R}))'
                f' / sum by (endpoint) (rate({CACHE_LOOKUPS}{{result=~"hit|miss"}}{R}))',
                "{{endpoint}}",
            ),
        ),
        "Hits among the cacheable requests (bypasses left out).",
    ),
    PanelSpec(
        "Tokens saved per second",
        "short",
        (
            Query(
                f"sum by (model) (rate(llama_gateway_cache_tokens_saved_total{R}))",
                "{{model}}",
            ),
        ),
        "Prompt and completion tokens of the answers served from the cache: work the "
        "upstreams did not do.",
    ),
    PanelSpec(
        "Cache bypasses per second by reason",
        "reqps",
        (Query(f"sum by (reason) (rate(llama_gateway_cache_bypasses_total{R}))", "{{reason}}"),),
        "not_cacheable (not deterministic, per-token data), no_store (Cache-Control), "
        "identity_unknown (what serves the model not read yet), store_unavailable (Redis down).",
    ),
    PanelSpec(
        "Answers stored per second",
        "short",
        (
            Query(f"sum(rate(llama_gateway_cache_stored_entries_total{R}))", "entries"),
            Query(
                f"sum(rate(llama_gateway_cache_memory_evictions_total{R}))",
                "evicted (in process)",
            ),
        ),
        "New entries written, and entries the in-process store evicted to stay within "
        "memory_max_bytes.",
    ),
    PanelSpec(
        "In-process cache size",
        "bytes",
        (Query("sum by (instance) (llama_gateway_cache_memory_bytes)", "{{instance}}"),),
        "Bytes held by each instance's in-process store (all workers together); 0 when the "
        "cache is in Redis (watch Redis's used_memory there).",
    ),
)

PROCESS = (
    PanelSpec(
        "CPU (cores)",
        "short",
        (Query(f"sum by (instance) (rate(process_cpu_seconds_total{{{GW}}}{R}))", "{{instance}}"),),
        "All worker processes of each gateway instance together.",
    ),
    PanelSpec(
        "Resident memory",
        "bytes",
        (Query(f"sum by (instance) (process_resident_memory_bytes{{{GW}}})", "{{instance}}"),),
    ),
    PanelSpec(
        "Open file descriptors",
        "short",
        (Query(f"sum by (instance) (process_open_fds{{{GW}}})", "{{instance}}"),),
        "Client and upstream connections, database pools, log files.",
    ),
)

ROWS = (
    ("Traffic", TRAFFIC),
    ("Latency and tokens", LATENCY),
    ("Policies: rate limits, auth", POLICIES),
    ("Upstreams", UPSTREAMS),
    ("Response cache", CACHE),
    ("Usage pipeline and dependencies", USAGE),
    ("Process resources", PROCESS),
)


def panel(spec: PanelSpec, panel_id: int) -> Panel:
    built = framed(
        Stat() if spec.stat else timeseries(),
        panel_id,
        spec.title,
        spec.unit,
        DATASOURCE,
        spec.width,
        spec.description,
    )
    for i, query in enumerate(spec.queries):
        target = Dataquery().expr(query.expr).legend_format(query.legend).ref_id(chr(65 + i))
        built = built.with_target(target.datasource(DATASOURCE))
    return built


def build() -> dict[str, Any]:
    dashboard = (
        Dashboard("llama-gateway")
        .uid(UID)
        .tags(["llama-gateway", "llm"])
        .description("Traffic, latency, tokens, policies, upstreams and resources.")
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    return encode(with_rows(dashboard, ROWS, panel))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, query) for every query of a dashboard JSON."""
    return [(p["title"], t["expr"]) for p, t in targets(dashboard)]


if __name__ == "__main__":
    sys.exit(main(__doc__, OUTPUT, build, "monitoring/dashboard.py"))
