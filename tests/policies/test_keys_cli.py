"""`llama-gateway keys create | list | revoke` against the configured store."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\ntiers: {{free: {{}}, premium: {{}}}}\n"
    )
    monkeypatch.setenv("LLAMA_GATEWAY_CONFIG", str(path))
    return path


def test_create_prints_the_key_once_and_list_never_shows_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["keys", "create", "--tier", "premium", "--owner", "alice", "--expires", "30d"]) == 0
    )
    key = capsys.readouterr().out.splitlines()[0]
    assert key.startswith("sk-gw_")
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key not in listing
    assert key.split("_")[1] in listing
    assert "active" in listing
    assert "alice" in listing
    assert key.encode() not in (config.parent / "data" / "gateway.db").read_bytes()


def test_revoke_marks_the_key_revoked(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keys", "create", "--tier", "free", "--owner", "bob"])
    key_id = capsys.readouterr().out.splitlines()[0].split("_")[1]
    assert main(["keys", "revoke", key_id]) == 0
    main(["keys", "list"])
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "000000000000"]) == 1


def test_unknown_tier_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--tier", "gold", "--owner", "eve"]) == 2
    assert "unknown tier 'gold'" in capsys.readouterr().err


def test_bad_expiry_is_explained(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["keys", "create", "--tier", "free", "--owner", "eve", "--expires", "soon"])
    assert "30d" in capsys.readouterr().err
