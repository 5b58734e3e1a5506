"""Upstream llama-server processes: their state, fewest-in-flight balancing (or by prefix,
`gateway.prefix`) and what model each serves (`gateway.identity`); `gateway.probe` keeps
their state from /health and /props."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any

from yarl import URL

from gateway.catalog import model_not_found
from gateway.circuit import CLOSED, STATE_NAMES, Circuit
from gateway.config import GatewayConfig
from gateway.endpoints import ENDPOINTS
from gateway.errors import upstream_unavailable
from gateway.identity import MODELS_PATH, PROPS_PATH, model_identity
from gateway.prefix import (
    PrefixConfig,
    PrefixIndex,
    Prompt,
    choose,
    lighter,
    prompt_of,
    stable_hash,
)
from gateway.resilience import BreakerConfig

log = logging.getLogger("gateway.upstreams")

UNKNOWN, HEALTHY, LOADING, DOWN = "unknown", "healthy", "loading", "down"


@dataclass(slots=True, eq=False)
class Upstream:
    # As configured; credentials in it (`http://user:password@host`) are taken out once
    # the addresses below are made: the URL names the upstream in answers, logs, usage
    # rows and metric labels, which must never show them.
    url: str
    model: str
    api_key: str | None = None
    state: str = UNKNOWN
    in_flight: int = 0
    # Most requests in flight at once (`gateway.admission`): its slots plus the overcommit,
    # 0 while unbounded (admission off, or slots not known yet).
    limit: int = 0
    slots: int | None = None
    slots_configured: bool = False
    overcommit: int | None = None  # None: admission is off
    # The model names it serves (one URL may serve several): whose waiters a freed slot wakes.
    models: list[str] = field(default_factory=list)
    # Rotates ties between equally loaded upstreams.
    picks: int = 0
    # Requests in the admission queue waiting for a slot of this one (`gateway.waitqueue`),
    # counted as its load by `gateway.prefix`.
    wanted: int = 0
    # Told when it can take more requests (healthy again, more slots): `gateway.admission`
    # then hands it to requests waiting for a slot.
    freed: Callable[[Upstream], None] | None = None
    # What it serves (`gateway.identity`), once a probe has read it; kept while it is down,
    # read afresh when it is back (None while that read fails).
    identity: str | None = None
    # The size of its model's vocabulary (`meta.n_vocab` of /v1/models), once a probe read it.
    vocab: int | None = None
    # Parsed once: building URLs per request is measurable on the hot path.
    endpoint_urls: dict[str, URL] = field(init=False)
    health_url: URL = field(init=False)
    props_url: URL = field(init=False)
    models_url: URL = field(init=False)
    # Fed by real calls (`gateway.circuit`): an open one keeps the upstream out of rotation.
    circuit: Circuit = field(init=False)
    # What it was sent, for the models routed by prefix (`gateway.prefix`), and its name
    # in their rendezvous hashing.
    prefixes: PrefixIndex | None = None
    seed: int = field(init=False)
    breaker: InitVar[BreakerConfig | None] = None

    def __post_init__(self, breaker: BreakerConfig | None) -> None:
        self.endpoint_urls = {
            e.name: URL(self.url + e.upstream_path) for e in ENDPOINTS if e.upstream_path
        }
        self.health_url = URL(self.url + "/health")
        self.props_url = URL(self.url + PROPS_PATH)
        self.models_url = URL(self.url + MODELS_PATH)
        address = URL(self.url)
        if address.user is not None or address.password is not None:
            self.url = str(address.with_user(None))
        self.seed = stable_hash(self.url.encode())
        self.circuit = Circuit(breaker or BreakerConfig(), self.url, self.model)

    @property
    def full(self) -> bool:
        return 0 < self.limit <= self.in_flight

    def set_slots(self, slots: int | None) -> None:
        self.slots = slots
        on = slots is not None and self.overcommit is not None
        before, self.limit = self.limit, slots + (self.overcommit or 0) if on and slots else 0
        if self.freed is not None and (self.limit > before or (before and not self.limit)):
            self.freed(self)

    @property
    def usable(self) -> bool:
        # Before the first probe answers, an upstream gets the benefit of the doubt.
        return self.state in (HEALTHY, UNKNOWN) and (
            self.circuit.state == CLOSED or self.circuit.admits()
        )

    def describe(self) -> str:
        if self.circuit.current() == CLOSED:
            return self.state
        return f"{self.state}, circuit {STATE_NAMES[self.circuit.state]}"

    def mark(self, state: str, reason: str = "") -> None:
        if state != self.state:
            level = logging.INFO if state == HEALTHY else logging.WARNING
            log.log(
                level,
                "upstream %s is %s",
                self.url,
                state,
                extra={"upstream": self.url, "model": self.model, "reason": reason},
            )
            self.state = state
            if state == HEALTHY and self.freed is not None:
                self.freed(self)


@dataclass(slots=True)
class Pool:
    by_model: dict[str, list[Upstream]] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Each model's identity (`gateway.identity.model_identity`), kept by `refresh_identities`.
    _identities: dict[str, str | None] = field(default_factory=dict)
    # Each model's requests waiting for a slot (the heaps of `gateway.admission`), here for
    # `llama_gateway_queue_depth` to read.
    waiting: dict[str, list[list[object]]] = field(default_factory=dict)
    # The models routed by prefix (`gateway.prefix`), with its settings.
    prefix: dict[str, PrefixConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.waiting = {model: [] for model in self.by_model}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Pool:
        shared: dict[str, Upstream] = {}
        by_model: dict[str, list[Upstream]] = {}
        breaker, admission = config.upstream.breaker, config.upstream.admission
        # Routed by prefix: a model with a choice of upstreams; with one there is none, and
        # its requests skip the prompt's hashing and the index.
        routed = [
            model
            for model, spec in config.models.items()
            if spec.routing == "prefix" and len(set(spec.upstreams)) > 1
        ]
        prefix = dict.fromkeys(routed, config.upstream.prefix)
        overcommit = admission.overcommit if admission.enabled else None
        for model, spec in config.models.items():
            by_model[model] = []
            for url in spec.upstreams:
                upstream = shared.get(url)
                if upstream is None:
                    upstream = shared[url] = Upstream(
                        url, model, spec.api_key, overcommit=overcommit, breaker=breaker
                    )
                    upstream.slots_configured = spec.slots is not None
                    upstream.set_slots(spec.slots)
                upstream.models.append(model)
                by_model[model].append(upstream)
                if model in prefix and upstream.prefixes is None:
                    upstream.prefixes = PrefixIndex(config.upstream.prefix.max_blocks)
        return cls(by_model, prefix=prefix)

    @property
    def upstreams(self) -> list[Upstream]:
        return list({id(u): u for ups in self.by_model.values() for u in ups}.values())

    def prompt(self, model: str, endpoint: str, body: dict[str, Any]) -> Prompt | None:
        """The blocks of a request's prompt, if its model is routed by prefix."""
        return prompt_of(endpoint, body) if model in self.prefix else None

    def pick(
        self, model: str, avoid: Upstream | None = None, prompt: Prompt | None = None
    ) -> Upstream:
        """The usable upstream of `model` with the fewest requests in flight; `avoid` (the
        one a retry follows) only when no other is usable; one with a free slot before a
        full one (a full one is returned only when all are: then the request waits for a
        slot). With a `prompt`, the one `gateway.prefix` prefers within its load guard. A
        half-open circuit's upstream is picked for one request at a time, its trial."""
        candidates = self.by_model.get(model)
        if candidates is None:
            raise model_not_found(model)
        usable = [u for u in candidates if u is not avoid and u.usable]
        if not usable and avoid is not None and avoid.usable:
            usable = [avoid]
        if not usable:
            states = ", ".join(f"{u.url} {u.describe()}" for u in candidates)
            raise upstream_unavailable(
                f"No upstream for model '{model}' is ready ({states}); retry in a few seconds."
            )
        best = usable[0]
        for upstream in usable:
            if lighter(upstream, best):
                best = upstream
        if prompt is not None and model in self.prefix:
            best = choose(prompt, usable, best, self.prefix[model])
        if not best.full:
            self.claim(best)
        return best

    def claim(self, upstream: Upstream) -> None:
        """`upstream` is given a request now: the next tie goes to another, and a half-open
        circuit gives it its one trial."""
        upstream.picks = next(self._counter)
        if upstream.circuit.state != CLOSED:
            upstream.circuit.take()

    def vocab(self, model: str) -> int | None:
        """The smallest vocabulary any upstream of `model` has (they serve one model)."""
        sizes = [u.vocab for u in self.by_model.get(model, ()) if u.vocab is not None]
        return min(sizes) if sizes else None

    def identity(self, model: str) -> str | None:
        """What serves `model` now; None until a probe has read it from an upstream."""
        return self._identities.get(model)

    def refresh_identities(self) -> None:
        """Each model's identity; None while an upstream that may be picked cannot say
        what it serves (its answers are not to be taken for another's)."""
        for model, upstreams in self.by_model.items():
            unknown = any(u.usable and u.identity is None for u in upstreams)
            identity = None if unknown else model_identity(u.identity for u in upstreams)
            if identity != self._identities.get(model):
                log.info(
                    "model %s is served by %s",
                    model,
                    identity,
                    extra={"model": model, "identity": identity},
                )
                self._identities[model] = identity

    def ready(self) -> dict[str, bool]:
        return {model: any(u.state == HEALTHY for u in ups) for model, ups in self.by_model.items()}
