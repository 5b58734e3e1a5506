"""The `llama-gateway` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from gateway.config import (
    ConfigError,
    GatewayConfig,
    config_path,
    parse_config,
    read_yaml,
    with_overrides,
)
from gateway.logs import setup_logging
from gateway.registry import build_chain


def load(args: argparse.Namespace) -> GatewayConfig:
    path = config_path(args.config)
    raw: dict[str, Any] = read_yaml(path) if path else {}
    merged = with_overrides(raw, host=args.host, port=args.port, upstreams=args.upstream or ())
    source = str(path) if path else "command line"
    config = parse_config(merged, source)
    build_chain(config.policies, source)  # policy settings are checked before anything starts
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = load(args)
    setup_logging(config.logging.level)
    from gateway.server import serve

    run(serve(config))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = parse_config(read_yaml(args.file), str(args.file))
    chain = build_chain(config.policies, str(args.file))
    print(
        f"{args.file}: ok ({len(config.models)} models, policies: "
        f"{', '.join(p.name for p in chain.policies) or 'none'})"
    )
    return 0


def run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def parser() -> argparse.ArgumentParser:
    from pathlib import Path

    top = argparse.ArgumentParser(prog="llama-gateway", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML configuration (default: $LLAMA_GATEWAY_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks one)")
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="MODEL=URL",
        help="serve MODEL from the llama-server at URL; repeat for more models or replicas",
    )
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)
    from gateway.local import add_local_command

    add_local_command(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
