"""The deployment files as data: the Kubernetes manifests, the gateway configuration their
ConfigMap holds, and the offline validators the tests run on them."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig, parse_config, read_yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
# Values for the ConfigMap's ${...} references, which the pods take from the Secret.
SECRET_ENV = {
    "DATABASE_URL": "postgresql://gateway@postgresql:5432/gateway",
    "REDIS_URL": "redis://redis:6379/0",
    "GATEWAY_ADMIN_TOKEN": "a-token-for-the-tests",
}
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text())]


def one(kind: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in k8s/, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def configmap_files(directory: Path) -> Path:
    """The ConfigMap's files written to `directory`; the path of its gateway.yaml."""
    for name, text in one("ConfigMap")["data"].items():
        (directory / name).write_text(text)
    return directory / "gateway.yaml"


def configured(directory: Path) -> tuple[GatewayConfig, Path]:
    """The gateway configuration the pods run, with the Secret's variables set."""
    path = configmap_files(directory)
    return parse_config(read_yaml(path, env=SECRET_ENV), str(path)), path


def policy_document(directory: Path) -> dict[str, Any]:
    config, path = configured(directory)
    assert config.policy_file is not None
    return read_yaml(path.parent / config.policy_file, env=SECRET_ENV)


def dockerfile_uid() -> int:
    match = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile makes its user with useradd --uid N"
    return int(match.group(1))


def tool(name: str, install: str) -> str:
    """The path of a validator: next to this Python (the project's venv), else on PATH.
    Missing, the test is skipped, except in CI (CI=true), where it fails."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), *_path()]))
    if found is None:
        message = f"{name} is not installed: {install}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the deployment files must be checked)")
        pytest.skip(message)
    return found


def _path() -> list[str]:
    return os.environ.get("PATH", "").split(os.pathsep)
