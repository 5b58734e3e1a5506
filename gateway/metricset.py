"""Metrics defined once per name: the registration API of the core and of policies.

A policy registers its metrics through `PolicyEnv.metrics` when it is built. The chain is
built anew on every policy reload with the same registry, so asking again for a metric
with the same definition gives back the same metric (its series and values kept); a
different definition of a name is a `MetricConflict`, never prometheus_client's
"Duplicated timeseries".

Every metric is a prometheus_client one, so it works the same in one process and with
several workers (`PROMETHEUS_MULTIPROC_DIR`: samples in files, added up at scrape time;
a gauge's `mode` says how). A gauge that reads its value from a function is `track`ed:
prometheus_client's own `set_function` is read only by the process it runs in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

NAMESPACE = "llama_gateway"

# Seconds. Answers from a CPU llama-server take from milliseconds (embeddings, short
# answers) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# How the gauge samples of several worker processes make one value (prometheus_client's
# multiprocess_mode); the `live` modes leave out workers that have exited.
GaugeMode = Literal[
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
]
M = TypeVar("M", bound=MetricWrapperBase)


class MetricConflict(ValueError):
    """A metric name defined a second time differently, or clashing with another's series."""


@dataclass(frozen=True)
class _Definition:
    type: str
    documentation: str
    labels: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]  # a gauge's mode, a histogram's buckets

    def differences(self, other: _Definition) -> str:
        return "; ".join(
            f"{f.name} {getattr(self, f.name)!r}, now {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        )


class MetricSet:
    """Metrics in one registry, each made on first use of its name."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._defined: dict[str, tuple[_Definition, MetricWrapperBase]] = {}
        self._tracked: dict[Gauge, Callable[[], float]] = {}

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """The counter `llama_gateway_<name>`, exposed as `llama_gateway_<name>_total`."""
        return self._define(Counter, name, documentation, labels)

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        mode: GaugeMode = "livesum",
    ) -> Gauge:
        """The gauge `llama_gateway_<name>`; `mode`: how several workers' values add up."""
        return self._define(Gauge, name, documentation, labels, multiprocess_mode=mode)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """The histogram `llama_gateway_<name>`, with these bucket bounds."""
        return self._define(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def _define(
        self, kind: type[M], name: str, documentation: str, labels: Sequence[str], **options: Any
    ) -> M:
        full = f"{NAMESPACE}_{name}"
        wanted = _Definition(
            kind.__name__.lower(), documentation, tuple(labels), (*options.items(),)
        )
        known = self._defined.get(full)
        if known is not None:
            definition, metric = known
            if definition != wanted or not isinstance(metric, kind):
                raise MetricConflict(
                    f"metric {full} is defined twice, differently "
                    f"({definition.differences(wanted)}); give one of them another name, "
                    "or define it in one place"
                )
            return metric
        try:
            made = kind(full, documentation, wanted.labels, registry=self.registry, **options)
        except ValueError as exc:
            if "Duplicated timeseries" not in str(exc):
                raise  # a malformed name or label: prometheus_client's message says which
            raise MetricConflict(
                f"metric {full} clashes with the series of a metric defined before ({exc}); "
                "give it another name"
            ) from exc
        self._defined[full] = (wanted, made)
        return made

    def track(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Keep `gauge` (one without labels) at `read()`: read at every scrape of this
        process and, with several workers, copied to the shared samples every second
        (`refresh`), so that a scrape of any worker adds it up too."""
        gauge.set_function(read)
        self._tracked[gauge] = read

    def refresh(self) -> None:
        """Copy every tracked gauge's value into its samples (the publisher calls it)."""
        for gauge, read in self._tracked.items():
            gauge.set(read())
