"""`llama-gateway serve`: the gateway, in one process or in `--workers N` sharing its port."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gateway.commands import add_config_flag, add_storage_flags, explained, run
from gateway.config import GatewayConfig, config_path, parse_config, read_yaml, with_overrides
from gateway.logs import setup_logging
from gateway.policydoc import PolicySource
from gateway.resources import Resources
from gateway.runtime import build
from gateway.server import serve
from gateway.workers import Supervisor, user_metrics_dir


def load(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> tuple[GatewayConfig, Path | None]:
    """The configuration from file (or `defaults` without one) and flags, with its policy
    document checked too."""
    path = config_path(getattr(args, "config", None))
    raw: dict[str, Any] = read_yaml(path) if path else dict(defaults or {})
    merged = with_overrides(
        raw,
        host=args.host,
        port=args.port,
        upstreams=args.upstream or (),
        database_url=args.database_url,
        redis_url=args.redis_url,
    )
    config = parse_config(merged, str(path) if path else "command line")
    build(PolicySource(config, path), Resources())
    return config, path


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        user_metrics_dir()  # with PROMETHEUS_MULTIPROC_DIR set, checking makes sample files
        config, path = load(args)
        setup_logging(config.logging.level)
        return Supervisor(config, path, args.workers).run()
    config, path = load(args)
    setup_logging(config.logging.level)
    with explained(config):
        run(serve(config, path))
    return 0


def add_serve_command(sub: Any) -> None:
    command = sub.add_parser("serve", help="run the gateway")
    add_config_flag(command)
    command.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks one)")
    command.add_argument(
        "--upstream",
        action="append",
        metavar="MODEL=URL",
        help="serve MODEL from the llama-server at URL; repeat for more models or replicas",
    )
    command.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes sharing the port (default 1); /metrics adds them up",
    )
    add_storage_flags(command)
    command.set_defaults(func=cmd_serve)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)
