"""Model variants: a model name that stands for weighted configured models (an A/B test).

They are part of the policy document (`variants:`), so a changed weight or a new
experiment applies on reload, without a restart. A request whose `model` is an
experiment's name is served by one of its variants: the caller's principal, hashed
(BLAKE2b, keyed by the experiment's name), is a point in [0, 1) that falls into one
variant's share of the weights, the variants taken in the order of their names. So a
caller keeps its variant for as long as the experiment's name and weights stay (however
often the document is reloaded, on every replica, whatever order the file lists them in),
and a new experiment name draws every caller afresh. A tier with `choose_variant` may
pick the variant itself with the `X-Model-Variant` header.

Requests for any other name cost one dictionary lookup.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field

from gateway.context import Assignment, RequestContext
from gateway.errors import GatewayError
from gateway.metricset import MetricSet
from gateway.settings import PolicySettings
from gateway.tiers import Tier

VARIANT_HEADER = "X-Model-Variant"
_SPAN = float(1 << 64)  # the 8-byte digest as a fraction of this

# A share relative to the others'; bounded so that the sum of all stays finite.
Weight = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]


class Experiment(PolicySettings):
    # What assignments are drawn by: a new name draws every caller afresh.
    experiment: str = Field(min_length=1, max_length=200)
    # Configured model names, each with its weight.
    choices: dict[str, Weight] = Field(min_length=1)

    @cached_property
    def _table(self) -> tuple[list[float], list[str], bytes]:
        """The upper end of each variant's share, the variants by name, what the
        principal's bytes follow in the hash (its length first: no two names collide)."""
        names = sorted(self.choices)
        ends = list(itertools.accumulate(self.choices[name] for name in names))
        prefix = f"{len(self.experiment)}:{self.experiment}:".encode("utf-8", "surrogatepass")
        return [end / ends[-1] for end in ends], names, prefix

    def assign(self, principal: str) -> str:
        """The variant of this caller: always the same for the same experiment and weights."""
        ends, names, prefix = self._table
        data = prefix + principal.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(data, digest_size=8).digest()
        point = int.from_bytes(digest, "big") / _SPAN  # may round up to 1.0: the last one
        return names[min(bisect.bisect_right(ends, point), len(names) - 1)]


def route(
    ctx: RequestContext, name: str, experiment: Experiment, tiers: Mapping[str, Tier]
) -> None:
    """Serve a request that named the experiment `name` by one of its variants: `model`
    becomes that variant's, `variant` records the choice."""
    wanted = ctx.request.headers.get(VARIANT_HEADER)
    if wanted is None:
        # Without an auth policy there is no principal: callers are told apart by address,
        # as the rate limits do.
        model = experiment.assign(ctx.principal or f"ip:{ctx.request.remote}")
    else:
        model = chosen(ctx, name, experiment, wanted, tiers)
    ctx.variant = Assignment(name, experiment.experiment, model)
    ctx.model = model


def chosen(
    ctx: RequestContext, name: str, experiment: Experiment, wanted: str, tiers: Mapping[str, Tier]
) -> str:
    """The variant a request picked itself, if its tier may and the experiment has it."""
    tier = tiers.get(ctx.tier) if ctx.tier is not None else None
    if tier is None or not tier.choose_variant:
        who = f"Your tier '{ctx.tier}'" if ctx.tier else "A request without a tier"
        raise GatewayError(
            403,
            f"{who} may not choose a variant of '{name}' with {VARIANT_HEADER}; leave the "
            "header out to be assigned one.",
            type="permission_error",
            code="permission_denied",
        )
    if wanted not in experiment.choices:
        raise GatewayError(
            400,
            f"{VARIANT_HEADER}: {wanted[:100]!r} is not a variant of '{name}'; use one of "
            f"{sorted(experiment.choices)}, or leave the header out to be assigned one.",
            code="invalid_variant",
        )
    return wanted


def problems(variants: Mapping[str, Experiment], models: Mapping[str, object]) -> list[str]:
    """The cross-checks against the gateway configuration, as `path: message`."""
    found = []
    for name, experiment in variants.items():
        if name in models:
            found.append(
                f"variants.{name}: is the name of a configured model; give the experiment a "
                "name of its own, which clients send as `model`"
            )
        found += [
            f"variants.{name}.choices.{choice}: not a configured model; models are {sorted(models)}"
            for choice in experiment.choices
            if choice not in models
        ]
    return found


class VariantCounter:
    """`llama_gateway_variant_requests_total`, a core metric (`gateway.metrics`): each
    configured variant's series exist from the policy load that configures it."""

    def __init__(self, metrics: MetricSet) -> None:
        self.counter = metrics.counter(
            "variant_requests",
            "Requests for an experiment's name (model variants), by experiment, the variant "
            "(model) chosen to serve it and status class (2xx, 4xx, 5xx; none when the client "
            "left before an answer).",
            ("experiment", "variant", "status"),
        )
        self.names: frozenset[str] = frozenset()  # the experiments' names in force
        self._children: dict[tuple[str, str, str], Any] = {}

    def configure(self, variants: Mapping[str, Experiment]) -> None:
        """The experiments in force (after each policy load)."""
        self.names = frozenset(variants)
        for experiment in variants.values():
            for model in experiment.choices:
                for status in ("2xx", "4xx", "5xx"):
                    self.count(Assignment("", experiment.experiment, model), status, 0)

    def count(self, variant: Assignment, status: str, amount: int = 1) -> None:
        key = (variant.experiment, variant.model, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.counter.labels(*key)
        child.inc(amount)
