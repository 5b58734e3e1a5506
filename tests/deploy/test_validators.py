"""Every deployment file passes its own validator, offline: the Kubernetes manifests
against the API schemas that kubernetes-validate ships, the compose file against the
compose specification's schema (and `docker compose config` where Docker Compose is
installed), the GitHub workflow through actionlint, the HAProxy configuration through
`haproxy -c`. The validators come with the `deploy` extra (pyproject.toml) and Debian's
haproxy package."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy import ROOT, manifest_files, tool
from tests.support.load_balancer import render

# The oldest Kubernetes whose kubelet runs a preStop `sleep` without a feature gate, and
# the newest that kubernetes-validate ships schemas for.
KUBERNETES = ["1.30.0", "1.37.0"]
EXTRA = "pip install -e '.[deploy]'"
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    validate = tool("kubernetes-validate", EXTRA)
    files = [str(p) for p in manifest_files()]
    done = run(validate, "--strict", "--kubernetes-version", version, *files)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(files)


def test_the_compose_file_follows_the_compose_specification() -> None:
    check = tool("check-jsonschema", EXTRA)
    done = run(check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_reads_the_compose_file() -> None:
    docker = shutil.which("docker")
    probe = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("Docker Compose is not installed (the compose spec's schema checks the file)")
    env = {**os.environ, "GATEWAY_ADMIN_TOKEN": "for-the-check"}
    assert docker is not None
    done = run(docker, "compose", "-f", str(COMPOSE), "config", "--quiet", env=env)
    assert done.returncode == 0, done.stderr


def test_the_workflow_passes_actionlint() -> None:
    actionlint = tool("actionlint", EXTRA)
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    done = run(actionlint, "-no-color", *workflows)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_accepts_the_compose_stacks_configuration(tmp_path: Path) -> None:
    haproxy = tool("haproxy", "apt-get install -y haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render(8080, [8081, 8082], 53))
    done = run(haproxy, "-c", "-f", str(config))
    assert done.returncode == 0, done.stderr
    assert "[WARNING]" not in done.stderr, done.stderr
