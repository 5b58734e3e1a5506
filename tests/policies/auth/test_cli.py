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


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What `keys create` printed when it refused with exit code 2 (and printed no key)."""
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", *argv])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert "sk-gw_" not in out
    return err


@pytest.mark.parametrize("past", ["2020-01-01", "2025-01-31T12:00:00+01:00", "0d", "0h"])
def test_an_expiry_in_the_past_is_refused(
    config: Path, past: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["--tier", "free", "--owner", "eve", "--expires", past], capsys)
    assert f"{past!r} is not in the future" in err
    assert "30d" in err
    main(["keys", "list"])
    assert "eve" not in capsys.readouterr().out


@pytest.mark.parametrize("far", ["99999999999w", "1000000w", "10000-01-01"])
def test_an_expiry_beyond_the_calendar_is_refused(
    config: Path, far: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(["--tier", "free", "--owner", "eve", "--expires", far], capsys)
    assert "--expires" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("owner", "problem"),
    [
        ("", "the owner is empty"),
        ("   ", "the owner is empty"),
        ("ali\nce", "control or invisible characters"),
        ("ali\x1b[31mce", "control or invisible characters"),
        ("ali\u200bce", "control or invisible characters"),
        ("\udcff", "control or invisible characters"),  # a non-UTF-8 byte in argv
        ("a" * 257, "longer than 256 characters"),
    ],
)
def test_an_owner_that_cannot_be_shown_or_stored_is_refused(
    config: Path, owner: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert problem in refused(["--tier", "free", "--owner", owner], capsys)


def test_an_owner_is_stored_without_surrounding_spaces(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--tier", "free", "--owner", "  José Núñez "]) == 0
    assert "owner José Núñez;" in capsys.readouterr().out


def test_a_key_is_refused_when_no_tier_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\n")
    monkeypatch.setenv("LLAMA_GATEWAY_CONFIG", str(path))
    assert main(["keys", "create", "--tier", "free", "--owner", "eve"]) == 2
    err = capsys.readouterr().err
    assert f"no tiers are configured in {path}" in err
    assert not (tmp_path / "data" / "gateway.db").exists()


def test_an_unreachable_key_database_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.local import free_port

    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{database_url: 'postgresql://u:pw@127.0.0.1:{port}/x'}}\n")
    assert main(["keys", "list", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the PostgreSQL database at 127.0.0.1:{port} ")
    assert "storage.database_url" in err
    assert ":pw@" not in err
    assert err.count("\n") == 1


def test_a_data_directory_that_cannot_be_made_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{data_dir: {tmp_path / 'file' / 'data'}}}\ntiers: {{free: {{}}}}\n")
    assert main(["keys", "list", "--config", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"error: the data directory {tmp_path / 'file' / 'data'} (storage.data_dir) cannot be "
        "used: NotADirectoryError: [Errno 20] Not a directory: "
        f"'{tmp_path / 'file' / 'data' / 'gateway.db'}'; "
        "make storage.data_dir a directory this user can write\n"
    )
