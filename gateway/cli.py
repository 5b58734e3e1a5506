"""The `llama-gateway` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from gateway.clierrors import Unavailable
from gateway.commands.check_config import add_check_config_command
from gateway.commands.db import add_db_command
from gateway.commands.local import add_local_command
from gateway.commands.serve import add_serve_command
from gateway.config import ConfigError

COMMANDS = "llama_gateway.commands"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="llama-gateway", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    add_serve_command(sub)
    add_check_config_command(sub)
    add_local_command(sub)
    add_db_command(sub)
    # Packages that provide policies may add commands (e.g. `keys` from the auth policy).
    for entry in entry_points(group=COMMANDS):
        entry.load()(sub)
    return top


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
