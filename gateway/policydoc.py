"""The policy document: tiers, the ordered policy chain and the model variants, the part
admins edit and reload.

It lives in `policy_file` (resolved next to the gateway configuration) or inline in the
gateway configuration under `tiers:`, `policies:` and `variants:`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from gateway.config import (
    ConfigError,
    GatewayConfig,
    PolicySettings,
    read_yaml,
    validation_problems,
)
from gateway.tiers import Tier
from gateway.variants import Experiment, problems

DEFAULT_POLICIES: list[dict[str, Any]] = [{"type": "request_id"}]
SECTIONS = ("tiers", "policies", "variants")  # the document's top-level keys


class PolicyDocument(PolicySettings):
    tiers: dict[str, Tier] = Field(default_factory=dict)
    policies: list[dict[str, Any]] = Field(default_factory=lambda: list(DEFAULT_POLICIES))
    # Model names that stand for weighted configured models (`gateway.variants`).
    variants: dict[str, Experiment] = Field(default_factory=dict)

    @field_validator("tiers")
    @classmethod
    def _names(cls, tiers: dict[str, Tier]) -> dict[str, Tier]:
        for name in tiers:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"tier name {name!r}: use letters, digits, '-' and '_'")
        return tiers


@dataclass(frozen=True)
class PolicySource:
    """Where the policy document comes from, and which file to watch for changes."""

    config: GatewayConfig
    config_path: Path | None

    @property
    def path(self) -> Path | None:
        if self.config.policy_file:
            policy = Path(self.config.policy_file).expanduser()
            if not policy.is_absolute() and self.config_path is not None:
                policy = self.config_path.parent / policy
            return policy
        return self.config_path

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "command line"

    def load(self) -> PolicyDocument:
        """Read and validate the document (the file again, when there is one), its
        variants against the configured models."""
        raw = dict(self.config) if self.path is None else read_yaml(self.path)
        if not self.config.policy_file:  # inline: only the policy sections
            raw = {k: raw[k] for k in SECTIONS if raw.get(k) is not None}
        elif not raw:  # a policy file caught while it is written reads as empty
            raise ConfigError(self.name, [EMPTY])
        document = parse_document(raw, self.name)
        found = problems(document.variants, self.config.models)
        if found:
            raise ConfigError(self.name, found)
        return document


EMPTY = (
    "(top level): the file holds no document (empty, or caught while being written); "
    "write `policies: []` for a gateway without policies"
)


def parse_document(raw: dict[str, Any], source: str) -> PolicyDocument:
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from exc
