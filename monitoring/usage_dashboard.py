"""The llama-gateway usage dashboard, as code: cost, tokens, errors and latency from the
`usage_records` table, read by Grafana straight from PostgreSQL.

    python monitoring/usage_dashboard.py          # writes grafana/dashboards/*-usage.json
    python monitoring/usage_dashboard.py --check  # exit 1 if the committed JSON differs

Every panel is one SQL query on the provisioned data source `usage-postgres` (a read-only
role: docs/operations.md), with Grafana's `$__timeFilter` and `$__timeGroupAlias` macros
so it reads the dashboard's time range only, through the `started_at` index.
tests/monitoring/test_usage_dashboard.py runs each one, its macros expanded as Grafana
expands them, against PostgreSQL holding generated rows, through that role.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DynamicConfigValue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from monitoring.dashboard_kit import Panel, encode, framed, main, timeseries, with_rows
from policies.usage.report import ERROR_CONDITION

OUTPUT = Path(__file__).parent / "grafana" / "dashboards" / "llama-gateway-usage.json"
UID = "llama-gateway-usage"
DATASOURCE = DataSourceRef(type_val="grafana-postgresql-datasource", uid="usage-postgres")
# Series per caller (or model) drawn one by one; the rest are summed as "(others)".
TOP = 10
IN_RANGE = "$__timeFilter(started_at)"
BUCKET = "$__timeGroupAlias(started_at, $__interval)"
ERROR = f"CASE WHEN {ERROR_CONDITION} THEN 1.0 ELSE 0.0 END"


@dataclass(frozen=True)
class SqlPanel:
    title: str
    unit: str
    sql: str
    kind: Literal["timeseries", "stacked", "table", "stat"] = "timeseries"
    description: str = ""
    width: int = 12
    # A table's columns whose unit is not the panel's.
    units: tuple[tuple[str, str], ...] = ()


class SqlQuery(Builder[Dataquery]):
    """A raw SQL target: the foundation SDK has no builder for SQL data sources."""

    def __init__(self, sql: str, table: bool) -> None:
        self.sql, self.table = sql, table

    def build(self) -> Dataquery:
        return UnknownDataquery(
            {
                "datasource": DATASOURCE.to_json(),
                "editorMode": "code",
                "format": "table" if self.table else "time_series",
                "rawQuery": True,
                "rawSql": self.sql,
                "refId": "A",
            }
        )


def per_bucket(name: str, measure: str, alias: str) -> str:
    return (
        f"SELECT {BUCKET}, {name} AS {alias}, {measure} AS value\n"
        f"FROM usage_records WHERE {IN_RANGE}\nGROUP BY 1, 2"
    )


def series(measure: str, column: str, top: bool = False) -> str:
    """`measure` per time bucket and per value of `column`, in Grafana's long format: time,
    metric (the series name), value, sorted by time. With `top`, the values with the
    largest sums over the range keep their series and the rest are summed as (others):
    ranked from the grouped rows, so the table is read once."""
    if not top:
        return per_bucket(f"coalesce({column}, '(none)')", measure, "metric") + " ORDER BY 1, 2"
    return (
        f"WITH grouped AS (\n{per_bucket(column, measure, 'name')}\n), top AS (\n"
        "SELECT name FROM grouped WHERE name IS NOT NULL\n"
        f"GROUP BY name ORDER BY sum(value) DESC, name LIMIT {TOP}\n)\n"
        "SELECT \"time\", CASE WHEN name IS NULL THEN '(none)'"
        " WHEN name IN (SELECT name FROM top) THEN name ELSE '(others)' END AS metric,"
        " sum(value) AS value\nFROM grouped GROUP BY 1, 2 ORDER BY 1, 2"
    )


COST = "sum(cost)"
TOKENS = "sum(prompt_tokens + completion_tokens)"


def by(name: str, column: str, top: bool = False) -> tuple[SqlPanel, SqlPanel]:
    note = f" The {TOP} largest by the panel's measure over the range, the rest as (others)."
    return (
        SqlPanel(
            f"Cost by {name}",
            "short",
            series(COST, column, top),
            "stacked",
            "Cost at the configured prices, in their currency." + (note if top else ""),
        ),
        SqlPanel(
            f"Tokens by {name}",
            "short",
            series(TOKENS, column, top),
            "stacked",
            "Prompt and completion tokens as llama-server reported them (for answers from "
            "the cache, those the stored answer stands for)." + (note if top else ""),
        ),
    )


def total(title: str, unit: str, value: str, description: str = "") -> SqlPanel:
    sql = f"SELECT {value} AS value FROM usage_records WHERE {IN_RANGE}"
    return SqlPanel(title, unit, sql, "stat", description, width=6)


TOTALS = (
    total("Cost", "short", f"coalesce({COST}, 0)"),
    total("Requests", "short", "count(*)"),
    total("Tokens", "short", f"coalesce({TOKENS}, 0)"),
    total(
        "Error share",
        "percentunit",
        f"avg({ERROR})",
        "Requests refused (by the gateway or a policy), failed upstream or failed in the "
        "gateway; a client hanging up is no error.",
    ),
)

TOP_SPENDERS = SqlPanel(
    "Top spenders",
    "short",
    # Summed per key first: the keys are then counted without count(DISTINCT), which only a
    # sorted aggregate computes (over a month that made PostgreSQL read the whole table in
    # user order through the subject index, 2.8 million buffers instead of 75 thousand).
    "SELECT coalesce(subject, '(none)') AS \"user\", count(key_id) AS keys,"
    " sum(requests) AS requests,\n"
    "  sum(tokens) AS tokens, sum(cost) AS cost,\n"
    "  sum(cost) / nullif(sum(sum(cost)) OVER (), 0) AS cost_share\n"
    f"FROM (SELECT subject, key_id, count(*) AS requests, {TOKENS} AS tokens, {COST} AS cost\n"
    f"  FROM usage_records WHERE {IN_RANGE} GROUP BY subject, key_id) AS per_key\n"
    "GROUP BY subject ORDER BY 5 DESC, 1 LIMIT 20",
    "table",
    "The 20 users (the key's owner, the token's subject) who spent most over the range; "
    "cost_share is their part of everyone's cost.",
    units=(("cost_share", "percentunit"),),
)

ERROR_SHARE = SqlPanel(
    "Error share by outcome",
    "percentunit",
    'SELECT "time", metric, value FROM (\n'
    f"  SELECT {BUCKET}, outcome AS metric,\n"
    "    count(*)::float8 / sum(count(*)) OVER"
    " (PARTITION BY $__timeGroup(started_at, $__interval)) AS value\n"
    f"  FROM usage_records WHERE {IN_RANGE} GROUP BY 1, 2\n"
    ") AS shares WHERE metric <> 'ok' ORDER BY 1, 2",
    description="Each outcome's share of the requests of its interval: rejected (refused by "
    "the gateway or a policy), upstream_error, internal_error, and client_disconnected "
    "(the client hung up: no error).",
)


def p95_by_model(title: str, column: str, which: str, description: str) -> SqlPanel:
    return SqlPanel(
        title,
        "ms",
        f"SELECT {BUCKET}, model AS metric,\n"
        f"  percentile_cont(0.95) WITHIN GROUP (ORDER BY {column}) AS value\n"
        f"FROM usage_records WHERE {IN_RANGE} AND {which}\nGROUP BY 1, 2 ORDER BY 1, 2",
        description=description,
    )


LATENCY = (
    p95_by_model(
        "p95 latency by model",
        "latency_ms",
        "attempts > 0",
        "From receiving the request to the end of its answer, for requests sent upstream "
        "(refusals and answers from the cache left out).",
    ),
    p95_by_model(
        "p95 time to first byte by model",
        "ttft_ms",
        "streamed AND attempts > 0",
        "Streams sent upstream: from receiving the request to the first byte relayed.",
    ),
)

UPSTREAM = "FILTER (WHERE attempts > 0)"
VARIANTS = SqlPanel(
    "Variants side by side",
    "short",
    "SELECT model, variant, count(*) AS requests,\n"
    f"  avg({ERROR}) AS error_share,\n"
    f"  percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) {UPSTREAM} AS p50_ms,\n"
    f"  percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) {UPSTREAM} AS p95_ms,\n"
    f"  percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) {UPSTREAM} AS p95_ttft_ms,\n"
    "  avg(completion_tokens)::float8 AS completion_tokens_per_request,\n"
    f"  {COST} AS cost, {COST} / count(*) AS cost_per_request\n"
    f"FROM usage_records WHERE {IN_RANGE} AND variant IS NOT NULL\n"
    "GROUP BY model, variant ORDER BY model, variant",
    "table",
    "Each experiment (the name requests sent as their model) and its variants (the "
    "configured models that served them) over the range: traffic, error share, latency of "
    "the requests sent upstream, answer length and cost.",
    width=24,
    units=(
        ("error_share", "percentunit"),
        *((column, "ms") for column in ("p50_ms", "p95_ms", "p95_ttft_ms")),
    ),
)

ROWS = (
    ("Over the time range", TOTALS),
    ("By tier", by("tier", "tier")),
    ("By model", by("model", "model", top=True)),
    ("By user", by("user", "subject", top=True)),
    ("By key", by("key", "key_id", top=True)),
    ("Spenders, errors and latency", (TOP_SPENDERS, ERROR_SHARE, *LATENCY)),
    ("Model variants", (VARIANTS,)),
)


def panel(spec: SqlPanel, panel_id: int) -> Panel:
    built: Panel
    if spec.kind == "stat":
        built = Stat()
    elif spec.kind == "table":
        built = Table()
    else:
        built = timeseries()
        if spec.kind == "stacked":
            built = built.stacking(StackingConfig().mode(StackingMode.NORMAL))
    built = framed(built, panel_id, spec.title, spec.unit, DATASOURCE, spec.width, spec.description)
    for column, unit in spec.units:
        built = built.override_by_name(column, [DynamicConfigValue(id_val="unit", value=unit)])
    return built.with_target(SqlQuery(spec.sql, table=spec.kind in ("stat", "table")))


def build() -> dict[str, Any]:
    dashboard = (
        Dashboard("llama-gateway usage")
        .uid(UID)
        .tags(["llama-gateway", "llm", "usage"])
        .description("Cost, tokens, errors and latency per tier, model, user and key.")
        .refresh("5m")
        .time("now-24h", "now")
        .timezone("browser")
    )
    return encode(with_rows(dashboard, ROWS, panel))


if __name__ == "__main__":
    sys.exit(main(__doc__, OUTPUT, build, "monitoring/usage_dashboard.py"))
