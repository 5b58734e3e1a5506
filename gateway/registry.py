"""Finds policies through the `llama_gateway.policies` entry point group and builds the chain.

The core never imports a concrete policy: the packages that provide policies (this
project's `policies/` and any third party's) register them in their packaging metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from gateway.config import ConfigError, validation_problems
from gateway.metricset import MetricConflict
from gateway.policy import Chain, Policy, PolicyEnv

GROUP = "llama_gateway.policies"


@cache
def available() -> Mapping[str, type[Policy]]:
    found: dict[str, type[Policy]] = {}
    for entry in entry_points(group=GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"entry point {entry.name} = {entry.value} is not a Policy subclass")
        found[entry.name] = cls
    return found


def build_chain(
    specs: list[dict[str, Any]], env: PolicyEnv, source: str = "configuration"
) -> Chain:
    """Validate every policy entry (errors name `policies[i].field`) and instantiate them."""
    known = available()
    problems: list[str] = []
    policies: list[Policy] = []
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        settings = dict(spec)
        name = settings.pop("type", None)
        if not isinstance(name, str):
            problems.append(
                f"policies[{i}].type: required: the policy's name, one of {sorted(known)}"
            )
            continue
        if name not in known:
            problems.append(f"policies[{i}].type: unknown policy {name!r}; known: {sorted(known)}")
            continue
        if name in seen:
            problems.append(f"policies[{i}].type: policy {name!r} appears twice; keep one entry")
            continue
        seen.add(name)
        cls = known[name]
        try:
            validated = cls.Settings.model_validate(settings)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, ("policies", i)))
            continue
        found = [f"policies[{i}].{p}" for p in cls.problems(validated, env)]
        problems.extend(found)
        if not found and not problems:
            try:
                policies.append(cls(validated, env))
            except MetricConflict as exc:  # two policies asking for one name differently
                problems.append(f"policies[{i}] ({name}): {exc}")
    if problems:
        raise ConfigError(source, problems)
    return Chain(policies)
