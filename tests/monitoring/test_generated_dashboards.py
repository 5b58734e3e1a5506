"""Both dashboards are generated: the committed JSON is each generator's output, each
generator checks it as a script, and the usage dashboard reads the data source that
Grafana is provisioned with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from monitoring import dashboard, usage_dashboard
from monitoring.dashboard_kit import render, targets

ROOT = Path(__file__).resolve().parents[2]
GENERATORS = (dashboard, usage_dashboard)
DATASOURCES = ROOT / "monitoring" / "grafana" / "provisioning" / "datasources"


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_the_committed_dashboard_is_the_generators_output(generator: ModuleType) -> None:
    assert generator.OUTPUT.read_text() == render(generator.build())


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda g: g.__name__)
def test_the_generator_checks_the_committed_json_as_a_script(generator: ModuleType) -> None:
    script = Path(generator.__file__ or "")
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_dashboards_have_their_own_uids_and_files() -> None:
    assert len({g.UID for g in GENERATORS}) == len({g.OUTPUT for g in GENERATORS}) == 2


def test_every_usage_query_reads_the_provisioned_postgres_data_source() -> None:
    provisioned = yaml.safe_load((DATASOURCES / "usage-postgres.yml").read_text())
    (source,) = provisioned["datasources"]
    built = usage_dashboard.build()
    used = {(t["datasource"]["type"], t["datasource"]["uid"]) for _, t in targets(built)}
    assert used == {(source["type"], source["uid"])}
    assert all(t["format"] in ("table", "time_series") for _, t in targets(built))


def test_the_postgres_data_source_takes_its_connection_from_the_environment() -> None:
    (source,) = yaml.safe_load((DATASOURCES / "usage-postgres.yml").read_text())["datasources"]
    settings = {
        "url": source["url"],
        "user": source["user"],
        "password": source["secureJsonData"]["password"],
        "database": source["jsonData"]["database"],
        "sslmode": source["jsonData"]["sslmode"],
    }
    assert all(value.startswith("${USAGE_PG_") for value in settings.values()), settings
