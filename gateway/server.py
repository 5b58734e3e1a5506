"""Running the gateway: listen, then drain gracefully on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.app import STATE, create_app
from gateway.config import GatewayConfig, ServerConfig
from gateway.protocol import GatewayRunner

log = logging.getLogger("gateway.server")


async def serve(
    config: GatewayConfig,
    config_path: Path | None = None,
    stop: asyncio.Event | None = None,
    *,
    reuse_port: bool = False,
    on_listening: Callable[[int], object] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then drain.

    Draining: `/ready` turns 503 (and stays so `drain_delay_seconds` while every request
    is still served), the listener closes, idle keep-alive connections are closed,
    in-flight requests (streams included) get `shutdown_grace_seconds` to finish, then
    completion work is flushed and resources are closed.
    """
    app = create_app(config, config_path=config_path)
    runner = GatewayRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=config.server.shutdown_grace_seconds,
    )
    await runner.setup()
    _tune_garbage_collector()
    try:
        port = await _listen(runner, config.server, reuse_port)
        _log_listening(config, app, port)
        if on_listening is not None:
            on_listening(port)
        await _until_stopped(app, stop or asyncio.Event())
        app[STATE].draining = True
        await _announce_drain(config.server)
        log.info(
            "shutting down: draining in-flight requests",
            extra={"grace_seconds": config.server.shutdown_grace_seconds},
        )
    finally:
        await runner.cleanup()
        log.info("stopped")


async def _announce_drain(server: ServerConfig) -> None:
    """Keep serving, not ready, until load balancers polling `/ready` have seen it: a
    request they send after the listener closes is refused and goes elsewhere, but one on a
    connection the gateway closes at that moment (kept alive, or not yet accepted) fails."""
    if server.drain_delay_seconds > 0:
        log.info(
            "not ready: still serving for %g s before draining",
            server.drain_delay_seconds,
            extra={"drain_delay_seconds": server.drain_delay_seconds},
        )
        await asyncio.sleep(server.drain_delay_seconds)


def _tune_garbage_collector() -> None:
    """Everything allocated so far lives as long as the process: keep the collector off it,
    and collect the young generation less often (7-15% less CPU per request measured)."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def _listen(runner: GatewayRunner, server: ServerConfig, reuse_port: bool) -> int:
    """Start accepting connections; the port bound, which port 0 leaves to the system."""
    site = web.TCPSite(runner, server.host, server.port, backlog=1024, reuse_port=reuse_port)
    await site.start()
    addresses = runner.addresses
    return addresses[0][1] if addresses else server.port


def _log_listening(config: GatewayConfig, app: web.Application, port: int) -> None:
    log.info(
        "listening on %s:%s",
        config.server.host,
        port,
        extra={
            "host": config.server.host,
            "port": port,
            "models": list(config.models),
            "policies": [p.name for p in app[STATE].runtime.chain.policies],
        },
    )


async def _until_stopped(app: web.Application, stop: asyncio.Event) -> None:
    """Wait for `stop`, which SIGTERM and SIGINT set; SIGHUP reloads the policies meanwhile."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app[STATE].runtime.reload_soon, "SIGHUP")
    await stop.wait()
