"""The `llama-gateway` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from gateway.clierrors import Unavailable, explained
from gateway.config import (
    ConfigError,
    GatewayConfig,
    config_path,
    parse_config,
    read_yaml,
    with_overrides,
)
from gateway.logs import setup_logging
from gateway.policydoc import PolicyDocument, PolicySource, parse_document
from gateway.resources import Resources
from gateway.runtime import build


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
        from gateway.workers import Supervisor, user_metrics_dir

        user_metrics_dir()  # with PROMETHEUS_MULTIPROC_DIR set, checking makes sample files
        config, path = load(args)
        setup_logging(config.logging.level)
        return Supervisor(config, path, args.workers).run()
    config, path = load(args)
    setup_logging(config.logging.level)
    from gateway.server import serve

    with explained(config):
        run(serve(config, path))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Check a gateway configuration (and its policy file), or a policy file alone."""
    path = args.file or config_path(getattr(args, "config", None))
    if path is None:
        print(
            "error: give the file to check: check-config FILE (or --config FILE, or "
            "$LLAMA_GATEWAY_CONFIG)",
            file=sys.stderr,
        )
        return 2
    raw = read_yaml(path)
    if raw and set(raw) <= {"tiers", "policies"}:
        document = parse_document(raw, str(path))
        config = parse_config({"models": {"-": {"upstreams": ["http://-"]}}, **raw})
        _, chain = build(PolicySource(config, path), Resources())
        print(
            f"{path}: ok (policy file: {len(document.tiers)} tiers, "
            f"policies: {', '.join(p.name for p in chain.policies) or 'none'})"
        )
        return 0
    config = parse_config(raw, str(path))
    document, chain = build(PolicySource(config, path), Resources())
    print(
        f"{path}: ok ({len(config.models)} models, {len(document.tiers)} tiers, policies: "
        f"{', '.join(p.name for p in chain.policies) or 'none'})"
    )
    return 0


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="llama-gateway", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    add_config_flag(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks one)")
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="MODEL=URL",
        help="serve MODEL from the llama-server at URL; repeat for more models or replicas",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes sharing the port (default 1); /metrics adds them up",
    )
    add_storage_flags(serve)
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path, nargs="?", help="the file (or --config FILE)")
    add_config_flag(check)
    check.set_defaults(func=cmd_check_config)
    from gateway.dbcli import add_db_command
    from gateway.local import add_local_command

    add_local_command(sub)
    add_db_command(sub)
    # Packages that provide policies may add commands (e.g. `keys` from the auth policy).
    for entry in entry_points(group="llama_gateway.commands"):
        entry.load()(sub)
    return top


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
        help="Redis for rate limits shared by replicas (default: storage.redis_url, else in "
        "process)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def admin_config(args: argparse.Namespace) -> tuple[GatewayConfig, PolicyDocument]:
    """The configuration for admin commands: storage settings and tiers, no models needed."""
    path = config_path(getattr(args, "config", None))
    raw: dict[str, Any] = read_yaml(path) if path else {}
    config = parse_config(raw, str(path) if path else "defaults", require_models=False)
    return config, PolicySource(config, path).load()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
