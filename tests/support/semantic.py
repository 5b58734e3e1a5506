"""Helpers for the semantic cache's tests: environments with an embedding model, and vectors."""

from __future__ import annotations

import random
from typing import Any

from gateway.config import GatewayConfig, ModelConfig
from gateway.metrics import Metrics
from gateway.policy import PolicyEnv
from gateway.resources import Resources
from gateway.storage import StorageConfig
from gateway.upstreams import Pool
from policies.cache.semantic import SemanticSettings, Vector

EMBED = "embed"
SPACE = "model-identity"


def semantic_env(url: str = "http://127.0.0.1:9", redis_url: str | None = None) -> PolicyEnv:
    """An environment whose one model, `embed`, is served at `url` (identity already read)."""
    config = GatewayConfig(
        models={EMBED: ModelConfig(upstreams=[url])}, storage=StorageConfig(redis_url=redis_url)
    )
    pool = Pool.from_config(config)
    for upstream in pool.upstreams:
        upstream.identity = SPACE
    return PolicyEnv(config, {}, Resources(), Metrics(), pool)


def replica(env: PolicyEnv) -> PolicyEnv:
    """Another replica's environment: the same configuration, its own resources and metrics."""
    return PolicyEnv(env.config, {}, Resources(), Metrics(), env.upstreams)


def semantic_settings(**changes: Any) -> SemanticSettings:
    return SemanticSettings(model=EMBED, **{"threshold": 0.95, **changes})


def unit(seed: int, dim: int = 8, space: str = SPACE) -> Vector:
    rng = random.Random(seed)
    vector = Vector.of([rng.gauss(0, 1) for _ in range(dim)], space)
    assert vector is not None
    return vector


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of one series of `metrics` (0 when it does not exist)."""
    value = metrics.registry.get_sample_value(f"llama_gateway_{name}", labels)
    return value or 0.0
