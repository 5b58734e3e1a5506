"""Upstream llama-server processes: fewest-in-flight balancing, /health probing and what
model each serves (`gateway.identity`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field

import aiohttp
import orjson
from yarl import URL

from gateway.circuit import CLOSED, STATE_NAMES, Circuit
from gateway.config import GatewayConfig
from gateway.endpoints import ENDPOINTS, MODELS
from gateway.errors import GatewayError, upstream_unavailable
from gateway.identity import MODELS_PATH, PROPS_PATH, model_identity, upstream_identity
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
    # Told when it can take more requests (healthy again, more slots): `gateway.admission`
    # then hands it to requests waiting for a slot.
    freed: Callable[[Upstream], None] | None = None
    # What it serves (`gateway.identity`), once a probe has read it; kept while it is down,
    # read afresh when it is back (None while that read fails).
    identity: str | None = None
    # Parsed once: building URLs per request is measurable on the hot path.
    endpoint_urls: dict[str, URL] = field(init=False)
    health_url: URL = field(init=False)
    props_url: URL = field(init=False)
    models_url: URL = field(init=False)
    # Fed by real calls (`gateway.circuit`): an open one keeps the upstream out of rotation.
    circuit: Circuit = field(init=False)
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

    def __post_init__(self) -> None:
        self.waiting = {model: [] for model in self.by_model}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Pool:
        shared: dict[str, Upstream] = {}
        by_model: dict[str, list[Upstream]] = {}
        breaker, admission = config.upstream.breaker, config.upstream.admission
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
        return cls(by_model)

    @property
    def upstreams(self) -> list[Upstream]:
        return list({id(u): u for ups in self.by_model.values() for u in ups}.values())

    def pick(self, model: str, avoid: Upstream | None = None) -> Upstream:
        """The usable upstream of `model` with the fewest requests in flight; `avoid` (the
        one a retry follows) only when no other is usable; one with a free slot before a
        full one (a full one is returned only when all are: then the request waits for a
        slot). A half-open circuit's upstream is picked for one request at a time, its trial."""
        candidates = self.by_model.get(model)
        if candidates is None:
            raise GatewayError(
                404,
                f"The model '{model}' does not exist; GET {MODELS.path} lists the models you "
                "can use.",
                code="model_not_found",
                param="model",
            )
        best: Upstream | None = None
        for upstream in candidates:
            if (
                upstream is not avoid
                and upstream.usable
                and (best is None or _lighter(upstream, best))
            ):
                best = upstream
        if best is None and avoid is not None and avoid.usable:
            best = avoid
        if best is None:
            states = ", ".join(f"{u.url} {u.describe()}" for u in candidates)
            raise upstream_unavailable(
                f"No upstream for model '{model}' is ready ({states}); retry in a few seconds."
            )
        if not best.full:
            best.picks = next(self._counter)
            if best.circuit.state != CLOSED:
                best.circuit.take()
        return best

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


def _lighter(upstream: Upstream, best: Upstream) -> bool:
    """Is `upstream` a better pick than `best`: free before full, then fewer in flight,
    then picked longer ago."""
    full = upstream.full
    if full != best.full:
        return not full
    return upstream.in_flight < best.in_flight or (
        upstream.in_flight == best.in_flight and upstream.picks < best.picks
    )


async def probe(session: aiohttp.ClientSession, upstream: Upstream, probe_timeout: float) -> None:
    try:
        async with session.get(
            upstream.health_url, timeout=aiohttp.ClientTimeout(total=probe_timeout)
        ) as resp:
            await resp.read()
            if resp.status == 200:
                if upstream.state != HEALTHY:  # back: it may serve another model file now
                    upstream.identity = None
                await _read_identity(session, upstream, probe_timeout)
                upstream.mark(HEALTHY)
            elif resp.status == 503:
                upstream.mark(LOADING, "health answered 503 (loading the model)")
            else:
                upstream.mark(DOWN, f"health answered {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        upstream.mark(DOWN, f"health probe failed: {exc.__class__.__name__} {exc}")


async def _read_identity(
    session: aiohttp.ClientSession, upstream: Upstream, probe_timeout: float
) -> None:
    """What a healthy upstream serves. A route it does not have (404: a server other than
    llama-server may lack `/props`) says nothing; any other failure keeps what it had, as an
    identity read from one answer of two would differ from the last and churn stored answers."""
    timeout = aiohttp.ClientTimeout(total=probe_timeout)
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else None
    answers = []
    try:
        for url in (upstream.props_url, upstream.models_url):
            async with session.get(url, timeout=timeout, headers=headers) as resp:
                body = await resp.read()
            if resp.status not in (200, 404):
                log.debug("upstream %s answered %s to %s", upstream.url, resp.status, url.path)
                return
            answers.append(orjson.loads(body) if resp.status == 200 else None)
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        log.debug("cannot read what upstream %s serves: %r", upstream.url, exc)
        return
    identity = upstream_identity(*answers)
    if identity is not None:
        upstream.identity = identity
    _read_slots(upstream, answers[0])


def _read_slots(upstream: Upstream, props: object) -> None:
    """The upstream's slots from `/props` `total_slots`, unless configured."""
    slots = props.get("total_slots") if isinstance(props, dict) else None
    if upstream.slots_configured or type(slots) is not int or slots < 1:
        return
    if slots != upstream.slots:
        log.info(
            "upstream %s has %d slots",
            upstream.url,
            slots,
            extra={"upstream": upstream.url, "model": upstream.model, "slots": slots},
        )
        upstream.set_slots(slots)


async def probe_forever(
    session: aiohttp.ClientSession, pool: Pool, interval: float, probe_timeout: float
) -> None:
    async def one(upstream: Upstream) -> None:
        await probe(session, upstream, probe_timeout)
        # At once: an upstream marked healthy is not picked under another's identity.
        pool.refresh_identities()

    while True:
        await asyncio.gather(*(one(u) for u in pool.upstreams))
        await asyncio.sleep(interval)
