"""Tiers: which endpoints and models a caller may use, its max_tokens cap and its priority.

Tiers are named in the policy document; an auth policy gives each request a tier and
other policies key their own per-tier settings (limits, cache TTLs) by the tier's name.
"""

from __future__ import annotations

import fnmatch
import re
from functools import cached_property
from typing import Literal

from pydantic import Field

from gateway.config import Strict

Endpoint = Literal["chat.completions", "completions", "embeddings", "models"]
ALL_ENDPOINTS: list[Endpoint] = ["chat.completions", "completions", "embeddings", "models"]


class Tier(Strict):
    endpoints: list[Endpoint] = Field(default_factory=lambda: list(ALL_ENDPOINTS))
    # Model names or shell-style patterns ("gemma*"); "*" allows every configured model.
    models: list[str] = Field(default_factory=lambda: ["*"])
    # Requests asking for more (or not saying) are capped to this many tokens.
    max_tokens: int | None = Field(None, gt=0)
    # Higher is served first when upstream slots are scarce.
    priority: int = 0

    @cached_property
    def _model_pattern(self) -> re.Pattern[str]:
        return re.compile("|".join(fnmatch.translate(p) for p in self.models))

    def allows_model(self, model: str) -> bool:
        return self._model_pattern.match(model) is not None

    def allows_endpoint(self, endpoint: str) -> bool:
        return endpoint in self.endpoints
