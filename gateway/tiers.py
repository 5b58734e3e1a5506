"""Tiers: which endpoints and models a caller may use, its max_tokens cap, its priority and
whether it may choose a model variant.

Tiers are named in the policy document; an auth policy gives each request a tier and
other policies key their own per-tier settings (rate limits, for one) by the tier's name.
Tiers belong to the core, not to the auth policy that assigns them: the policy document
defines them, the core labels its request metrics by tier, and `priority` is for the
upstream pool, to order requests waiting for its slots (`gateway.admission`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from functools import cached_property

from pydantic import Field, ValidationInfo, field_validator

from gateway.config import PolicySettings
from gateway.endpoints import ENDPOINTS, MODEL_PERMISSIONS, PERMISSIONS, EndpointName
from gateway.settings import PositiveFloat

_NOTHING = re.compile(r"(?!)")  # matches no string
_MODEL_FREE = ", ".join(name for name in PERMISSIONS if name not in MODEL_PERMISSIONS)


class Tier(PolicySettings):
    # Endpoints by permission (`gateway.endpoints.PERMISSIONS`: `tokenize` allows detokenize).
    endpoints: list[EndpointName] = Field(default_factory=lambda: list(PERMISSIONS))
    # Model names or shell-style patterns ("gemma*"); "*" allows every configured model,
    # an empty list none (then the tier may use no endpoint that takes a model).
    models: list[str] = Field(default_factory=lambda: ["*"])
    # Requests asking for more (or not saying) are capped to this many tokens.
    max_tokens: int | None = Field(None, gt=0)
    # Higher is served first while requests wait for upstream slots (`gateway.admission`).
    priority: int = 0
    # A request that waited this long for a slot is answered 503 server_busy.
    max_queue_seconds: PositiveFloat = 30.0
    # May pick an experiment's variant with `X-Model-Variant` (`gateway.variants`).
    choose_variant: bool = False

    @field_validator("models")
    @classmethod
    def _some_model_for_model_endpoints(cls, models: list[str], info: ValidationInfo) -> list[str]:
        using = sorted(MODEL_PERMISSIONS.intersection(info.data.get("endpoints", ())))
        if not models and using:
            raise ValueError(
                f"an empty list allows no model, so {', '.join(using)} would always be "
                "refused; list model names or patterns ('*' for every model), or limit "
                f"endpoints to [{_MODEL_FREE}]"
            )
        return models

    @cached_property
    def _model_pattern(self) -> re.Pattern[str]:
        if not self.models:  # "|".join of nothing is the empty pattern, which matches all
            return _NOTHING
        return re.compile("|".join(fnmatch.translate(p) for p in self.models))

    def allows_model(self, model: str) -> bool:
        return self._model_pattern.match(model) is not None

    @cached_property
    def _endpoint_names(self) -> frozenset[str]:
        return frozenset(e.name for e in ENDPOINTS if e.permission in self.endpoints)

    def allows_endpoint(self, endpoint: str) -> bool:
        """Whether the endpoint of this name (`ctx.endpoint`) is in the tier's endpoints."""
        return endpoint in self._endpoint_names


def unknown_tiers(named: Iterable[tuple[str, str]], tiers: Mapping[str, Tier]) -> list[str]:
    """A policy's cross-check: `path: unknown tier ...` for each (path, tier name) its
    settings give that the policy document does not define."""
    return [
        f"{path}: unknown tier {name!r}; tiers are {sorted(tiers)}"
        for path, name in named
        if name not in tiers
    ]
