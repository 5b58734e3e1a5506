"""The gateway's configuration: typed models that reject unknown keys, loaded in one place.

A YAML file holds the full configuration; `${NAME}` and `${NAME:-default}` in string values
are replaced from the environment. Every error names the path of the offending value
(`models.chat.upstreams[0]: ...`) so an admin can find it at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from gateway.cors import CorsConfig
from gateway.prefix import PrefixConfig
from gateway.resilience import AdmissionConfig, BreakerConfig, RetryConfig
from gateway.settings import PolicySettings as PolicySettings  # re-exported
from gateway.settings import PositiveFloat
from gateway.storage import StorageConfig

CONFIG_ENV = "LLAMA_GATEWAY_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists `path: message` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n  " + "\n  ".join(problems))


class ServerConfig(PolicySettings):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # After SIGTERM, `/ready` answers 503 this long while every request is still served, so
    # that a load balancer polling `/ready` stops sending new ones before the listener closes.
    drain_delay_seconds: float = Field(0.0, ge=0, le=300)
    cors: CorsConfig = CorsConfig()  # for browser clients; off without origins


class UpstreamConfig(PolicySettings):
    connect_timeout: PositiveFloat = 5.0
    # Prompt processing on a CPU can take minutes before the first token.
    first_byte_timeout: PositiveFloat = 300.0
    idle_timeout: PositiveFloat = 60.0
    # llama-server closes idle keep-alive connections after about 5 s: stay below it.
    keepalive_seconds: PositiveFloat = 4.0
    health_interval_seconds: PositiveFloat = 5.0
    health_timeout_seconds: PositiveFloat = 2.0
    max_connections: int = Field(0, ge=0)
    # Failover to another replica before the answer starts, and per-upstream circuits.
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    admission: AdmissionConfig = AdmissionConfig()  # a tier-priority queue for the slots
    prefix: PrefixConfig = PrefixConfig()  # for the models with `routing: prefix`


class ModelConfig(PolicySettings):
    upstreams: list[str] = Field(min_length=1)
    api_key: str | None = None
    slots: int | None = Field(None, ge=1)  # per upstream; unset: `/props` `total_slots`
    # How a request picks one of the upstreams: the one that already holds the longest part
    # of its prompt in its cache, guarded by load (`gateway.prefix`; bench/prefix_routing
    # measured it), or the fewest requests in flight.
    routing: Literal["least_in_flight", "prefix"] = "prefix"

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL such as http://127.0.0.1:8081")
        return [url.rstrip("/") for url in urls]


class LoggingConfig(PolicySettings):
    level: str = "INFO"
    access_log: bool = True

    @field_validator("level")
    @classmethod
    def _level(cls, level: str) -> str:
        if level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level.upper()


class TracingConfig(PolicySettings):
    """OpenTelemetry tracing (the `otel` extra), off by default."""

    enabled: bool = False
    # OTLP over HTTP; a collector (or Jaeger, Tempo) listening on 4318.
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "llama-gateway"
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of traces the caller did not decide on

    @field_validator("enabled")
    @classmethod
    def _installed(cls, enabled: bool) -> bool:
        if enabled and importlib.util.find_spec("opentelemetry.sdk") is None:
            raise ValueError("OpenTelemetry is not installed: pip install 'llama-gateway[otel]'")
        return enabled


class GatewayConfig(PolicySettings):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    storage: StorageConfig = StorageConfig()
    # The policy document (tiers, the chain, model variants) lives in its own file, which
    # is reloaded when it changes, or inline under `tiers:`, `policies:` and `variants:`.
    policy_file: str | None = None
    # Tiers by name; validated as `gateway.tiers.Tier` with the policy document.
    tiers: dict[str, Any] | None = None
    # Each entry is `{type: <policy name>, ...settings}`; the policy validates its settings.
    policies: list[dict[str, Any]] | None = None
    variants: dict[str, Any] | None = None  # validated as `gateway.variants.Experiment`
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    policy_reload_seconds: float = Field(2.0, gt=0)


def error_path(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_problems(exc: ValidationError, prefix: Iterable[int | str] = ()) -> list[str]:
    problems = []
    for err in exc.errors():
        path = error_path([*prefix, *err["loc"]]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against docs/configuration.md)"
        problems.append(f"{path}: {message}")
    return problems


def substitute_env(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {
            k: substitute_env(v, env, error_path([path, k] if path else [k]))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError("environment", [f"{path}: environment variable {name} is not set"])

    return _ENV_REF.sub(replace, value)


def read_yaml(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["(top level): must be a mapping of sections"])
    try:
        return dict(substitute_env(raw, os.environ if env is None else env))
    except ConfigError as exc:
        raise ConfigError(str(path), exc.problems) from exc


def parse_config(
    raw: Mapping[str, Any], source: str = "configuration", *, require_models: bool = True
) -> GatewayConfig:
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from exc
    if config.policy_file and (config.tiers, config.policies, config.variants) != (None,) * 3:
        either = "give either policy_file or inline tiers/policies/variants, not both"
        raise ConfigError(source, [f"policy_file: {either}"])
    if require_models and not config.models:
        raise ConfigError(
            source,
            ["models: no model configured: add a models section or pass --upstream MODEL=URL"],
        )
    return config


def with_overrides(
    raw: Mapping[str, Any],
    *,
    host: str | None = None,
    port: int | None = None,
    upstreams: Iterable[str] = (),
    database_url: str | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """Apply command-line flags on top of a raw file configuration.

    `--upstream MODEL=URL` may repeat; all URLs given for one model replace that model's
    upstreams from the file.
    """
    merged: dict[str, Any] = {**raw}
    storage = {
        key: value
        for key, value in (("database_url", database_url), ("redis_url", redis_url))
        if value is not None
    }
    if storage:
        merged["storage"] = {**(merged.get("storage") or {}), **storage}
    server = dict(merged.get("server") or {})
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    merged["server"] = server
    flag_models = _upstreams_by_model(upstreams)
    if flag_models:
        models = dict(merged.get("models") or {})
        for model, urls in flag_models.items():
            models[model] = {**(models.get(model) or {}), "upstreams": urls}
        merged["models"] = models
    return merged


def _upstreams_by_model(upstreams: Iterable[str]) -> dict[str, list[str]]:
    by_model: dict[str, list[str]] = {}
    for item in upstreams:
        model, sep, url = item.partition("=")
        if not sep or not model or not url:
            raise ConfigError(
                "--upstream", [f"{item!r}: expected MODEL=URL, e.g. chat=http://127.0.0.1:8081"]
            )
        by_model.setdefault(model, []).append(url)
    return by_model


def config_path(explicit: str | None) -> Path | None:
    chosen = explicit or os.environ.get(CONFIG_ENV)
    return Path(chosen) if chosen else None
