"""The base of every settings model, kept apart from the configuration loader so that a
module whose settings the configuration holds (`gateway.resilience`) can import it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]


class PolicySettings(BaseModel):
    """The base of every settings model, the gateway's own sections and each policy's:
    unknown keys are errors, and settings do not change once read. Policies import it
    from the plugin API, `gateway.policy`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
