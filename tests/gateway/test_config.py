"""Loading and validating configuration; `check-config` names the path of every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main, parser
from gateway.commands.local import default_settings
from gateway.commands.serve import load
from gateway.config import ConfigError, parse_config, read_yaml, with_overrides
from gateway.policy import PolicyEnv
from gateway.policydoc import PolicySource
from gateway.registry import available, build_chain
from gateway.resources import Resources
from gateway.runtime import build

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("shipped", "summary"),
    [
        ("examples/gateway.yaml", "0 tiers, policies: request_id"),
        ("compose/gateway.yaml", "2 tiers, policies: request_id, usage, auth, rate_limit, cache"),
    ],
)
def test_shipped_configs_are_valid(
    shipped: str, summary: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "set-by-compose")
    assert main(["check-config", str(ROOT / shipped)]) == 0
    assert f"ok (2 models, {summary})" in capsys.readouterr().out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_check_config_names_the_path_of_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
server: {port: 99999, colour: blue}
upstream: {idle_timeout: -1}
models:
  chat: {upstreams: ["ftp://x"]}
  empty: {upstreams: []}
policies:
  - {type: request_id, max_length: 3}
  - {type: nope}
""",
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    for expected in (
        "server.port: Input should be less than or equal to 65535",
        "server.colour: unknown key",
        "upstream.idle_timeout: Input should be greater than 0",
        "models.chat.upstreams: 'ftp://x' is not an http(s) URL",
        "models.empty.upstreams: List should have at least 1 item",
    ):
        assert expected in err


def test_policy_settings_errors_name_their_index(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        build_chain(
            [{"type": "request_id", "max_length": 3}, {"type": "nope"}, {"header": "x"}],
            PolicyEnv(
                parse_config({"models": {"m": {"upstreams": ["http://h"]}}}), {}, Resources()
            ),
        )
    known = sorted(available())  # every installed policy, whichever they are
    assert {"auth", "request_id"} <= set(known)
    assert exc.value.problems == [
        "policies[0].max_length: Input should be greater than or equal to 8",
        f"policies[1].type: unknown policy 'nope'; known: {known}",
        f"policies[2].type: required: the policy's name, one of {known}",
    ]


def test_env_references_are_substituted(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  m: {upstreams: ['http://${UP_HOST}:${UP_PORT:-8081}']}\n")
    config = parse_config(read_yaml(path, {"UP_HOST": "10.0.0.5"}))
    assert config.models["m"].upstreams == ["http://10.0.0.5:8081"]


def test_missing_env_reference_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  m: {upstreams: ['http://${NOT_SET_ANYWHERE}']}\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml(path, {})
    assert exc.value.problems == [
        "models.m.upstreams[0]: environment variable NOT_SET_ANYWHERE is not set"
    ]


def test_flags_alone_are_a_configuration() -> None:
    raw = with_overrides({}, port=9000, upstreams=["a=http://h:1", "a=http://h:2", "b=http://h:3"])
    config = parse_config(raw)
    assert config.server.port == 9000
    assert config.models["a"].upstreams == ["http://h:1", "http://h:2"]
    assert config.policies is None  # the default chain: request IDs


def test_storage_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("storage: {database_url: postgresql://file/db, data_dir: /srv/gw}\n")
    flags = ["--database-url", "postgresql://flag/db", "--redis-url", "redis://flag:6379/0"]
    args = parser().parse_args(["serve", "--config", str(path), "--upstream=m=http://h:1", *flags])
    config, _ = load(args)
    assert config.storage.database_url == "postgresql://flag/db"
    assert config.storage.redis_url == "redis://flag:6379/0"
    assert config.storage.data_dir == "/srv/gw"


def test_local_without_a_file_accounts_usage_limits_callers_and_caches_in_embedded_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLAMA_GATEWAY_CONFIG", raising=False)
    args = parser().parse_args(["local", "--upstream", "m=http://h:1"])
    config, path = load(args, default_settings())
    assert path is None
    assert config.storage.database_url is None
    assert config.storage.redis_url is None
    _, chain = build(PolicySource(config, None), Resources())
    assert [p.name for p in chain.policies] == ["request_id", "usage", "rate_limit", "cache"]


def test_no_models_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({})
    assert "--upstream MODEL=URL" in exc.value.problems[0]


def test_bad_upstream_flag_is_explained() -> None:
    with pytest.raises(ConfigError) as exc:
        with_overrides({}, upstreams=["http://no-model"])
    assert "expected MODEL=URL" in exc.value.problems[0]


def test_invalid_yaml_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, "models: [unclosed"))]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_example_policy_file_is_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", "x" * 40)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "y" * 40)
    assert main(["check-config", str(ROOT / "examples" / "policy.yaml")]) == 0
    assert "3 tiers, policies: request_id, usage, auth, rate_limit" in capsys.readouterr().out


def test_policy_file_naming_an_unknown_tier_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
tiers: {free: {max_tokens: 1}}
policies:
  - {type: auth, static_keys: [{hash: "sha256:%s", owner: o, tier: gold}]}
"""
        % ("0" * 64),
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "policies[0].static_keys[0].tier: unknown tier 'gold'; tiers are ['free']" in err


@pytest.mark.parametrize("how", ["--config", "environment"])
def test_check_config_takes_the_file_as_every_other_command_does(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "models: {m: {upstreams: ['http://127.0.0.1:9']}}\n")
    if how == "--config":
        assert main(["check-config", "--config", str(path)]) == 0
    else:
        monkeypatch.setenv("LLAMA_GATEWAY_CONFIG", str(path))
        assert main(["check-config"]) == 0
    assert f"{path}: ok (1 models" in capsys.readouterr().out


def test_check_config_without_a_file_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLAMA_GATEWAY_CONFIG", raising=False)
    assert main(["check-config"]) == 2
    assert "give the file to check" in capsys.readouterr().err
