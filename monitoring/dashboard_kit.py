"""What the dashboard generators share (grafana-foundation-sdk): the frame every panel gets,
rows of panels with stable ids, the JSON encoding, and the command line that writes a
dashboard or checks that the committed JSON is the generator's output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef

Panel = Stat | Table | Timeseries
S = TypeVar("S")


def timeseries() -> Timeseries:
    """A time series with a light fill and its legend listed below it."""
    return (
        Timeseries()
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
    )


def framed(
    built: Panel,
    panel_id: int,
    title: str,
    unit: str,
    datasource: DataSourceRef,
    width: int,
    description: str = "",
) -> Panel:
    """The settings every panel has: id, title, unit, data source and place on the grid."""
    built = built.id(panel_id).title(title).unit(unit).datasource(datasource).height(8)
    built = built.span(width)
    return built.description(description) if description else built


def with_rows(
    dashboard: Dashboard,
    rows: Iterable[tuple[str, Iterable[S]]],
    make: Callable[[S, int], Builder[Any]],
) -> Dashboard:
    """Each row and its panels, numbered in order: Grafana needs unique panel ids, and
    stable ones keep links to a panel working."""
    ids = iter(range(1, 1000))
    for title, specs in rows:
        dashboard = dashboard.with_row(Row(title).id(next(ids)))
        for spec in specs:
            dashboard = dashboard.with_panel(make(spec, next(ids)))
    return dashboard


def encode(dashboard: Dashboard) -> dict[str, Any]:
    encoded: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    return encoded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard JSON, those inside collapsed rows included."""
    for item in dashboard["panels"]:
        yield from [item, *item.get("panels", [])]


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of a dashboard JSON."""
    return [(p, t) for p in panels(dashboard) for t in p.get("targets", [])]


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main(doc: str, output: Path, build: Callable[[], dict[str, Any]], script: str) -> int:
    """`script` writes `output`; `script --check` exits 1 when the committed JSON differs."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed JSON")
    args = parser.parse_args()
    dashboard = build()
    text = render(dashboard)
    if args.check:
        if output.read_text() != text:
            print(f"{output} is stale: run python {script}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    print(f"wrote {output} ({len(targets(dashboard))} queries)")
    return 0
