"""The `llama-gateway` commands, a module each; this one is what a command is built from.

It is the API for commands, the built-in ones and those a policy package adds: a function
named in the `llama_gateway.commands` entry-point group receives `llama-gateway`'s
subparsers and adds its command with the flags and helpers below; the command's `func`
returns the exit code.

    def register(sub: Any) -> None:
        keys = sub.add_parser("keys", help="manage API keys")
        add_config_flag(keys)
        keys.set_defaults(func=cmd_keys)

Inside `explained(config)`, a service the command cannot use (the database down) becomes
`Unavailable`: `llama-gateway` prints its one line and exits with 1 (2 for a `ConfigError`).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.clierrors import Unavailable, explained
from gateway.config import GatewayConfig, config_path, parse_config, read_yaml
from gateway.eventloop import run
from gateway.policydoc import PolicyDocument, PolicySource

__all__ = [
    "Unavailable",
    "add_config_flag",
    "add_storage_flags",
    "admin_config",
    "explained",
    "run",
]


def add_config_flag(command: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--config FILE`, for a command and for each of its actions: `keys --config F create`
    and `keys create --config F` both work, the one after the action winning."""
    # Suppressed default: a subcommand's own default would otherwise overwrite the value
    # its parent command parsed.
    command.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=help or "gateway configuration (default: $LLAMA_GATEWAY_CONFIG)",
    )


def add_storage_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL for API keys and usage (default: storage.database_url, else an "
        "embedded SQLite file)",
    )
    command.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis for rate limits shared by replicas, redis+cluster://host:port,... for a "
        "Redis Cluster (default: storage.redis_url, else in process)",
    )


def admin_config(args: argparse.Namespace) -> tuple[GatewayConfig, PolicyDocument]:
    """The configuration for admin commands: storage settings and tiers, no models needed."""
    path = config_path(getattr(args, "config", None))
    raw: dict[str, Any] = read_yaml(path) if path else {}
    config = parse_config(raw, str(path) if path else "defaults", require_models=False)
    return config, PolicySource(config, path).load()
