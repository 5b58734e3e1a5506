"""`llama-gateway db migrate` and `llama-gateway usage` against PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from policies.usage.sqlite_store import SqliteUsageStore
from tests.support.usage import ROWS


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    storage = {"data_dir": str(tmp_path / "data"), "database_url": database_url}
    path.write_text(f"storage: {json.dumps(storage)}\n")
    monkeypatch.setenv("LLAMA_GATEWAY_CONFIG", str(path))
    return path


def test_db_migrate_applies_every_package_once_on_postgres(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch, pg_url)
    assert main(["db", "migrate"]) == 0
    out = capsys.readouterr().out
    assert "applied 001_api_keys" in out
    assert "applied 002_usage" in out
    assert main(["db", "migrate"]) == 0
    assert "(0 migrations applied)" in capsys.readouterr().out


def test_db_migrate_creates_the_embedded_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch)
    assert main(["db", "migrate"]) == 0
    assert "applied 002_usage" in capsys.readouterr().out
    assert (tmp_path / "data" / "gateway.db").is_file()


def test_db_migrate_explains_an_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.local import free_port

    port = free_port()
    write_config(tmp_path, monkeypatch, f"postgresql://postgres:pw@127.0.0.1:{port}/test")
    assert main(["db", "migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the PostgreSQL database at 127.0.0.1:{port} ")
    assert "start it or correct storage.database_url" in err
    assert ":pw@" not in err


async def _fill_sqlite(path: Path) -> None:
    store = SqliteUsageStore(path)
    await store.connect()
    await store.insert(ROWS)
    await store.close()


def test_usage_prints_a_table_from_the_embedded_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch)
    asyncio.run(_fill_sqlite(tmp_path / "data" / "gateway.db"))
    assert main(["usage", "--since", "1h", "--by", "model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("usage from ")
    assert lines[2].split()[:6] == ["m1", "20", "200", "0.0%", "100", "1"]
    assert lines[3].split()[:2] == ["m2", "7"]
    assert lines[4].split()[:2] == ["TOTAL", "27"]


def test_usage_prints_json_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch)
    asyncio.run(_fill_sqlite(tmp_path / "data" / "gateway.db"))
    assert main(["usage", "--since", "7d", "--json", "--by", "tier"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {g["group"]: g["requests"] for g in report["data"]} == {"free": 21, "premium": 7}
    assert datetime.fromisoformat(report["until"]) <= datetime.now(UTC)


def test_usage_on_an_unmigrated_postgres_says_to_migrate(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch, pg_url)
    assert main(["usage"]) == 1
    assert "run `llama-gateway db migrate`" in capsys.readouterr().err


def test_usage_refuses_a_time_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, monkeypatch)
    assert main(["usage", "--since", "last week"]) == 1
    said = capsys.readouterr().err
    assert "--since: " in said
    assert "24h" in said


def test_usage_explains_an_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.local import free_port

    port = free_port()
    write_config(tmp_path, monkeypatch, f"postgresql://postgres:pw@127.0.0.1:{port}/test")
    assert main(["usage"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the PostgreSQL database at 127.0.0.1:{port} ")
    assert "start it or correct storage.database_url" in err
    assert ":pw@" not in err
