"""The Kubernetes manifests agree with each other, with the image and with the gateway
configuration they carry: probes, ports, grace periods, volumes, selectors, secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import create_app
from gateway.cli import main
from tests.support.deploy import (
    ENV_REFERENCE,
    K8S,
    ROOT,
    SECRET_ENV,
    configmap_files,
    configured,
    dockerfile_uid,
    gateway_container,
    manifest_files,
    one,
    pod_spec,
    policy_document,
)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables the pods take from the Secret."""
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("secret_env")
def test_the_configmap_files_pass_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(configmap_files(tmp_path))]) == 0
    assert "policies: request_id, usage, auth, rate_limit, cache" in capsys.readouterr().out


@pytest.mark.usefixtures("secret_env")
def test_the_probes_ask_paths_the_gateway_serves(tmp_path: Path) -> None:
    config, path = configured(tmp_path)
    app = create_app(config, config_path=path)
    served = {
        resource.canonical
        for resource in app.router.resources()
        if any(route.method == "GET" for route in resource)
    }
    probes = gateway_container()
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"/ready", "/health"} <= served


def test_every_port_is_the_configured_one(tmp_path: Path) -> None:
    port = configured(tmp_path)[0].server.port
    container = gateway_container()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert named[container[probe]["httpGet"]["port"]] == port
    service_ports = {p["name"]: p for p in one("Service")["spec"]["ports"]}
    for service_port in service_ports.values():
        assert named[service_port["targetPort"]] == port
    for rule in one("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == one("Service")["metadata"]["name"]
            assert backend["port"]["name"] in service_ports
    ingress_ports = one("NetworkPolicy")["spec"]["ingress"][0]["ports"]
    assert [named[p["port"]] for p in ingress_ports] == [port]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert f"EXPOSE {port}\n" in (ROOT / "Dockerfile").read_text()


def test_the_grace_period_covers_the_pause_the_drain_and_the_journal(tmp_path: Path) -> None:
    server = configured(tmp_path)[0].server
    usage = next(p for p in policy_document(tmp_path)["policies"] if p["type"] == "usage")
    pause = gateway_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = (pause + server.drain_delay_seconds + server.shutdown_grace_seconds) + usage.get(
        "shutdown_seconds", 10
    )
    assert pod_spec()["terminationGracePeriodSeconds"] > needed


def test_the_data_directory_is_on_a_writable_volume_and_nothing_else_is(tmp_path: Path) -> None:
    data_dir = Path(configured(tmp_path)[0].storage.data_dir)
    container = gateway_container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    holding = [
        m
        for m in container["volumeMounts"]
        if data_dir.is_relative_to(m["mountPath"]) and not m.get("readOnly")
    ]
    assert len(holding) == 1
    assert (
        "emptyDir" in volumes[holding[0]["name"]]
        or "persistentVolumeClaim" in (volumes[holding[0]["name"]])
    )
    # The directory the gateway makes (0700, its own) is below the mount point, whose
    # owner is root: the gateway tightens only a directory of its own.
    assert data_dir != Path(holding[0]["mountPath"])


def test_the_pod_runs_as_the_images_user_without_privileges() -> None:
    pod, container = pod_spec()["securityContext"], gateway_container()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == dockerfile_uid()
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(gateway_container()["resources"]["requests"])
    assert "memory" in gateway_container()["resources"]["limits"]


def test_every_selector_picks_the_gateway_pods() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def picks(selector: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    assert picks(deployment["spec"]["selector"]["matchLabels"])
    assert picks(one("Service")["spec"]["selector"])
    assert picks(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert picks(one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_at_least_two_replicas_stay_through_scaling_and_disruptions() -> None:
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert one("Deployment")["spec"]["replicas"] >= 2
    assert hpa["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["minReplicas"]
    assert one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_ingress_lets_streams_through_unbuffered_and_long(tmp_path: Path) -> None:
    config = configured(tmp_path)[0]
    notes = one("Ingress")["metadata"]["annotations"]

    def note(name: str) -> str:
        value: str = notes[f"nginx.ingress.kubernetes.io/{name}"]
        return value

    assert note("proxy-buffering") == "off"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(note(timeout)) > config.upstream.first_byte_timeout
        assert int(note(timeout)) > config.upstream.idle_timeout
    body = re.fullmatch(r"(\d+)m", note("proxy-body-size"))
    assert body is not None
    assert int(body.group(1)) << 20 >= config.server.max_body_bytes
    assert "non_idempotent" not in note("proxy-next-upstream")


def test_every_variable_the_configuration_reads_comes_from_the_secret() -> None:
    texts = one("ConfigMap")["data"].values()
    wanted = {name for text in texts for name in ENV_REFERENCE.findall(text)}
    for policy in yaml.safe_load(one("ConfigMap")["data"]["policy.yaml"])["policies"]:
        wanted |= {v for k, v in _leaves(policy) if k.endswith("_env")}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in gateway_container()["env"]}
    assert set(env) == wanted
    secret = one("Secret")
    assert {ref["name"] for ref in env.values()} == {secret["metadata"]["name"]}
    assert {ref["key"] for ref in env.values()} == set(secret["stringData"])


def test_kustomization_applies_every_manifest_but_the_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in manifest_files()} - {"secret.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)
    images = {i["name"] for i in kustomization["images"]}
    assert gateway_container()["image"].split(":")[0] in images


def _leaves(value: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, k)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v, key)]
    return [(key, value)]
