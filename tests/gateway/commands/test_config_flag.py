"""`--config FILE` is accepted before and after the action of every command that reads one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main, parser
from gateway.config import CONFIG_ENV


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration the commands find only through `--config` (no environment variable)."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default data_dir is not used
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\ntiers: {{free: {{}}}}\n")
    return path


def placed(command: list[str], config: Path, before: bool) -> list[str]:
    """`command` with `--config FILE` after its first word (before) or at its end (after)."""
    flag = ["--config", str(config)]
    return [command[0], *flag, *command[1:]] if before else [*command, *flag]


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_db_migrate_reads_the_config_given_before_or_after_migrate(
    config: Path, before: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(placed(["db", "migrate"], config, before)) == 0
    assert f"{config.parent / 'data' / 'gateway.db'}: schema up to date" in capsys.readouterr().out


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_keys_commands_read_the_config_given_before_or_after_the_action(
    config: Path, before: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    create = ["keys", "create", "--tier", "free", "--owner", "alice"]
    assert main(placed(create, config, before)) == 0
    key_id = capsys.readouterr().out.splitlines()[0].split("_")[1]
    assert (config.parent / "data" / "gateway.db").is_file()
    assert main(placed(["keys", "list"], config, before)) == 0
    assert key_id in capsys.readouterr().out
    assert main(placed(["keys", "revoke", key_id], config, before)) == 0
    assert f"revoked {key_id}" in capsys.readouterr().out


def test_the_config_given_after_the_action_wins_over_the_one_before(
    config: Path, tmp_path: Path
) -> None:
    args = parser().parse_args(["keys", "--config", "first.yaml", "list", "--config", str(config)])
    assert args.config == str(config)


def test_usage_reads_the_config_given_after_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["usage", "--json", "--config", str(config)]) == 0
    assert '"data":[]' in capsys.readouterr().out
    assert (config.parent / "data" / "gateway.db").is_file()
