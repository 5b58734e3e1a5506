"""Plot the dashboard's main panels from a real Prometheus, with the dashboard's own queries.

A development tool for the picture in docs/operations.md (matplotlib is not a gateway dependency):

    python -m tests.monitoring.stack --minutes 4 --plot monitoring/dashboard.png

starts Prometheus, a gateway and traffic, then calls `plot_dashboard`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import aiohttp

DASHBOARD = Path(__file__).parent / "grafana" / "dashboards" / "llama-gateway.json"
MAIN_PANELS = (
    "Requests per second by status",
    "Error ratio (5xx)",
    "Request duration",
    "Time to first token",
    "Gateway overhead",
    "Tokens per second by model and tier",
    "Rate-limited requests per second",
    "Auth failures per second",
    "Usage records per second",
)
RATE_INTERVAL = "30s"


def panels(titles: tuple[str, ...] = MAIN_PANELS) -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dashboard["panels"] if p.get("targets")}
    return [by_title[t] for t in titles]


def legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


async def query_range(
    session: aiohttp.ClientSession, prometheus: str, expr: str, start: float, end: float
) -> list[dict[str, Any]]:
    params = {
        "query": expr.replace("$__rate_interval", RATE_INTERVAL),
        "start": str(start),
        "end": str(end),
        "step": str(max(1, int((end - start) / 300))),
    }
    async with session.get(prometheus + "/api/v1/query_range", params=params) as resp:
        body = await resp.json()
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def plot_dashboard(
    session: aiohttp.ClientSession, prometheus: str, start: float, end: float, output: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = panels()
    columns = 3
    rows = math.ceil(len(chosen) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(15, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, chosen, strict=False):
        for target in panel["targets"]:
            for series in await query_range(session, prometheus, target["expr"], start, end):
                times = [(float(t) - start) / 60 for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = legend(target.get("legendFormat", ""), series["metric"])
                ax.plot(times, values, label=label[:40], linewidth=1.2)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(f"{panel['title']} ({unit})" if unit else panel["title"], fontsize=10)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    figure.suptitle("llama-gateway: main dashboard panels (Prometheus, the dashboard's queries)")
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    plt.close(figure)
