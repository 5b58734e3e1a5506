"""The data directory is 0700 and llama-server's logs 0600, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import CONFIG_ENV
from gateway.private import open_private, private_dir
from gateway.storage import StorageConfig


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The common default, under which new directories are 0755 and files 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_directory_is_created_private(tmp_path: Path) -> None:
    storage = StorageConfig(data_dir=str(tmp_path / "a" / "data"))
    assert storage.data_path == tmp_path / "a" / "data"
    assert mode(tmp_path / "a" / "data") == 0o700


def test_an_existing_data_directory_open_to_others_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    assert StorageConfig(data_dir=str(data)).data_path == data
    assert mode(data) == 0o700


def test_a_shared_sticky_directory_is_left_alone_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with caplog.at_level(logging.WARNING, "gateway.private"):
        private_dir(shared)
    assert mode(shared) == 0o1777
    assert f"the directory {shared} is open to other users (mode 1777)" in caplog.text


def test_a_directory_that_cannot_be_made_is_left_to_its_user(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert private_dir(tmp_path / "file" / "data") == tmp_path / "file" / "data"


def test_keys_create_leaves_a_private_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\ntiers: {{free: {{}}}}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert main(["keys", "create", "--tier", "free", "--owner", "alice"]) == 0
    assert mode(tmp_path / "data") == 0o700
    assert (tmp_path / "data" / "gateway.db").is_file()


def test_a_log_file_is_private_new_or_left_by_an_earlier_run(tmp_path: Path) -> None:
    logs = private_dir(tmp_path / "logs")
    with open_private(logs / "new.log") as out:
        out.write(b"prompt text")
    old = logs / "old.log"
    old.write_bytes(b"an earlier run's lines")
    old.chmod(0o644)
    with open_private(old) as out:
        out.write(b"x")
    assert (mode(logs), mode(logs / "new.log"), mode(old)) == (0o700, 0o600, 0o600)
    assert old.read_bytes() == b"x"
