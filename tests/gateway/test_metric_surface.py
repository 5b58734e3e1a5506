"""What dashboards and alerts rely on: every metric's name, type, help text and the series
that exist from the start, with every policy on, kept in tests/gateway/metric_surface.txt.

A change to any of them is a change for operators: regenerate the file with
`LLAMA_GATEWAY_WRITE_SURFACE=1 pytest tests/gateway/test_metric_surface.py`, and say so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

SURFACE = Path(__file__).with_name("metric_surface.txt")


def surface(exposition: str, upstream: str) -> str:
    """The exposition without values (and the test's upstream URL named as such)."""
    lines = []
    for line in exposition.replace(upstream, "<upstream>").splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line:
            series, _, _ = line.rpartition(" ")
            lines.append(re.sub(r'version="[^"]*"', 'version="<version>"', series))
    return "\n".join(lines) + "\n"


async def test_the_metrics_operators_rely_on_are_unchanged(
    every_policy: TestClient[Any, Any], fake_url: str
) -> None:
    client = every_policy
    resp = await client.get("/metrics")
    found = surface(await resp.text(), fake_url)
    if os.environ.get("LLAMA_GATEWAY_WRITE_SURFACE") == "1":
        SURFACE.write_text(found, encoding="utf-8")
    assert found == SURFACE.read_text(encoding="utf-8")
