"""`GET /metrics`: the gateway's metrics, its upstreams' state and its process resources.

One process: the application's own registry, plus process and Python collectors.
Several workers (`serve --workers N`): every worker writes its samples to files in
`PROMETHEUS_MULTIPROC_DIR`; whichever worker is scraped adds up all of them
(prometheus_client's multi-process mode) and reports every worker's process resources
with a `worker` label.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.metrics import Metrics, multiprocess_dir
from gateway.metricset import NAMESPACE
from gateway.upstreams import HEALTHY, Pool

log = logging.getLogger("gateway.metrics")

# How often a worker publishes its upstreams' state and tracked gauges for the others.
PUBLISH_SECONDS = 1.0


def publish_pool(metrics: Metrics, pool: Pool) -> None:
    """Copy the upstreams' health, in-flight counts and circuit states, and the models'
    queue depths, into their gauges."""
    for upstream in pool.upstreams:
        metrics.upstream_up.labels(upstream.url, upstream.model).set(
            1 if upstream.state == HEALTHY else 0
        )
        metrics.upstream_in_flight.labels(upstream.url, upstream.model).set(upstream.in_flight)
        metrics.upstream_circuit.labels(upstream.url, upstream.model).set(
            upstream.circuit.current()
        )
    for model, waiting in pool.waiting.items():
        metrics.queue_depth.labels(model).set(len(waiting))


async def publish_forever(metrics: Metrics, pool: Pool) -> None:
    """Multi-process mode: keep this worker's share of the upstream gauges, and of the
    gauges policies track, fresh."""
    while True:
        publish_pool(metrics, pool)
        metrics.refresh()
        await asyncio.sleep(PUBLISH_SECONDS)


class BuildInfo(Collector):
    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily(f"{NAMESPACE}_build", "The gateway's version.")
        info.add_metric([], {"version": __version__})
        workers = GaugeMetricFamily(
            f"{NAMESPACE}_workers", "Worker processes serving this gateway instance."
        )
        directory = multiprocess_dir()
        workers.add_metric([], len(worker_pids(Path(directory))) if directory else 1)
        return [info, workers]


def worker_pid_file(directory: Path, index: int) -> Path:
    return directory / f"worker_{index}.pid"


def worker_pids(directory: Path) -> dict[str, int]:
    """Worker index -> process id, as each worker wrote it when it started."""
    pids = {}
    for path in directory.glob("worker_*.pid"):
        try:
            pids[path.stem.removeprefix("worker_")] = int(path.read_text())
        except (OSError, ValueError):
            continue  # a worker being replaced right now
    return pids


class WorkerProcesses(Collector):
    """`process_*` metrics of every worker, labelled `worker="<index>"`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for index, pid in sorted(worker_pids(self.directory).items()):
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in collector.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": index}, sample.value)
        return list(families.values())


class MetricsEndpoint:
    def __init__(self, metrics: Metrics, pool: Pool) -> None:
        self.metrics = metrics
        self.pool = pool
        self.directory = multiprocess_dir()
        self.registry = registry = CollectorRegistry()
        registry.register(BuildInfo())
        if self.directory is None:
            registry.register(_Forward(metrics.registry))
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        else:
            MultiProcessCollector(registry, self.directory)  # type: ignore[no-untyped-call]
            registry.register(WorkerProcesses(Path(self.directory)))

    async def handle(self, request: web.Request) -> web.Response:
        publish_pool(self.metrics, self.pool)
        self.metrics.refresh()
        if self.directory is None:
            body = generate_latest(self.registry)
        else:  # reads one file per worker and metric type: keep it off the event loop
            body = await asyncio.to_thread(generate_latest, self.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


class _Forward(Collector):
    """The application's metrics, inside the exposition registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.source = registry

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


def write_worker_pid(index: int) -> None:
    directory = multiprocess_dir()
    if directory is not None:
        # Written whole, then renamed: a reader never sees an empty or partial file.
        path = worker_pid_file(Path(directory), index)
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(str(os.getpid()))
        os.replace(partial, path)
