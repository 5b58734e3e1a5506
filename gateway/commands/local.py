"""`llama-gateway local`: real llama-servers with the small Gemma model, the gateway in front.

The llama-server processes are `gateway.local`'s; this module is the command around them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway import local
from gateway.commands import add_config_flag, add_storage_flags, explained, run
from gateway.commands.serve import load
from gateway.logs import setup_logging
from gateway.registry import available
from gateway.server import serve


def default_settings() -> dict[str, Any]:
    """Without --config: usage accounting, per-client rate limits and the response cache on,
    in their embedded stores unless --database-url / --redis-url name shared ones (each only
    if installed)."""
    chain: list[dict[str, Any]] = [
        {"type": "request_id"},
        {"type": "usage"},
        {
            "type": "rate_limit",
            "default": {"requests_per_minute": 600, "tokens_per_minute": 200_000, "concurrency": 8},
        },
        {"type": "cache"},
    ]
    installed = available()
    return {"policies": [entry for entry in chain if entry["type"] in installed]}


def cmd_local(args: argparse.Namespace) -> int:
    setup_logging("INFO")
    print(
        f"starting llama-server: {local.CHAT_MODEL} (chat), {local.EMBED_MODEL} (embeddings)...",
        flush=True,
    )
    try:
        with local.llama_servers(local.cache_dir() / "logs") as urls:
            _serve(args, urls)
    except local.LocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace, urls: dict[str, str]) -> None:
    args.upstream = [f"{name}={url}" for name, url in urls.items()] + (args.upstream or [])
    config, path = load(args, default_settings())
    setup_logging(config.logging.level)

    def listening(port: int) -> None:  # the port chosen, with --port 0
        print(
            f"gateway on http://{config.server.host}:{port}/v1 "
            f"(models: {', '.join(config.models)}); Ctrl-C stops everything",
            flush=True,
        )

    with explained(config):
        run(serve(config, path, on_listening=listening))


def add_local_command(sub: Any) -> None:
    command = sub.add_parser(
        "local", help="run real llama-servers with the small Gemma model and the gateway in front"
    )
    add_config_flag(command, "YAML configuration for the gateway's other settings")
    command.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=int, default=None, help="gateway port (default 8080)")
    command.add_argument("--upstream", action="append", metavar="MODEL=URL", help=argparse.SUPPRESS)
    add_storage_flags(command)
    command.set_defaults(func=cmd_local)
