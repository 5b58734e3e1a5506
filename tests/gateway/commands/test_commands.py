"""Commands that packages add through the `llama_gateway.commands` entry-point group: they
appear in `llama-gateway --help` and run with the command API of `gateway.commands`."""

from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

import gateway.cli
from gateway.cli import main
from gateway.commands import add_config_flag, admin_config

BUILT_IN = ("serve", "check-config", "local", "db")


def register(sub: Any) -> None:
    """A command as a policy package would add it: the tiers its configuration names."""
    tiers = sub.add_parser("tiers", help="list the configured tiers")
    add_config_flag(tiers)
    tiers.set_defaults(func=cmd_tiers)


def cmd_tiers(args: argparse.Namespace) -> int:
    _, document = admin_config(args)
    print(" ".join(sorted(document.tiers)))
    return 3  # the command's own exit code reaches the caller


@pytest.fixture
def with_tiers_command(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = EntryPoint("tiers", f"{__name__}:register", gateway.cli.COMMANDS)

    def installed_and_ours(group: str) -> list[EntryPoint]:
        return [*entry_points(group=group), ours]

    monkeypatch.setattr(gateway.cli, "entry_points", installed_and_ours)


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_the_policy_packages_commands_are_listed_with_the_built_in_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = help_text(capsys)
    for command in (*BUILT_IN, "keys", "usage"):
        assert command in listed.split()


@pytest.mark.usefixtures("with_tiers_command")
def test_a_command_from_the_entry_point_group_is_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "tiers" in help_text(capsys).split()


@pytest.mark.usefixtures("with_tiers_command")
def test_a_command_from_the_entry_point_group_runs_with_its_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"storage: {{data_dir: {tmp_path}}}\ntiers: {{free: {{}}, pro: {{}}}}\n")
    assert main(["tiers", "--config", str(config)]) == 3
    assert capsys.readouterr().out == "free pro\n"
