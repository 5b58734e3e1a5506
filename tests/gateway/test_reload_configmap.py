"""Hot reload from a Kubernetes ConfigMap volume, whose files are symlinks into a directory
that an update replaces whole: the kubelet writes the new files into a fresh `..<timestamp>`
directory, points a temporary `..data_tmp` symlink at it, renames that over `..data` (one
atomic step), then removes the old directory. Each visible file stays the same symlink
(`policy.yaml -> ..data/policy.yaml`) the whole time: a watcher that looks at the link
itself, its inode or its mtime never sees a change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STATE, create_app
from tests.support.gateways import CHAT, gateway_config
from tests.support.waiting import eventually

POLICY_A = "policies:\n  - {type: request_id, header: X-Trace-A}\n"
POLICY_B = "policies:\n  - {type: request_id, header: X-Trace-B}\n"


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a mounted ConfigMap."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        self.generation = 0
        self.current = self._write(files)
        os.symlink(self.current, root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def _write(self, files: dict[str, str]) -> str:
        self.generation += 1
        name = f"..2026_12_03_12_00_{self.generation:02d}.{123456789 + self.generation}"
        folder = self.root / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
            os.utime(folder / file, (0, 0))  # the same mtime in every generation
        return name

    def update(self, files: dict[str, str]) -> None:
        old, self.current = self.current, self._write(files)
        os.symlink(self.current, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")
        for file in files:
            (self.root / old / file).unlink()
        (self.root / old).rmdir()


async def trace_headers(client: TestClient[Any, Any]) -> set[str]:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    return {h for h in resp.headers if h.startswith("X-Trace")}


@pytest.mark.parametrize("layout", ["policy_file", "inline"])
async def test_a_configmap_update_swapping_its_data_directory_is_reloaded(
    aiohttp_client: Any, fake_url: str, tmp_path: Path, layout: str
) -> None:
    if layout == "policy_file":
        sections: dict[str, Any] = {"policy_file": "policy.yaml"}
        files = {"gateway.yaml": "policy_file: policy.yaml\n", "policy.yaml": POLICY_A}
        updated = {**files, "policy.yaml": POLICY_B}
    else:  # tiers and policies inside gateway.yaml: the configuration file is watched
        sections = {"policies": [{"type": "request_id", "header": "X-Trace-A"}]}
        files, updated = {"gateway.yaml": POLICY_A}, {"gateway.yaml": POLICY_B}
    volume = ConfigMapVolume(tmp_path, files)
    link = tmp_path / "gateway.yaml"
    config = gateway_config(fake_url, policy_reload_seconds=0.05, **sections)
    client = await aiohttp_client(create_app(config, config_path=link))
    assert await trace_headers(client) == {"X-Trace-A"}
    before = os.lstat(link)

    volume.update(updated)

    after = os.lstat(link)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    await eventually(lambda: client.app[STATE].runtime.reloads == 1, seconds=30)
    assert await trace_headers(client) == {"X-Trace-B"}
    assert client.app[STATE].runtime.failures == 0
