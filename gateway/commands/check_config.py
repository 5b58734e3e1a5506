"""`llama-gateway check-config`: validate a configuration, or a policy file alone, and exit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.commands import add_config_flag
from gateway.config import config_path, parse_config, read_yaml
from gateway.policydoc import SECTIONS, PolicySource, parse_document
from gateway.resources import Resources
from gateway.runtime import build


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
    if raw and set(raw) <= set(SECTIONS):
        document = parse_document(raw, str(path))
        # Without the gateway configuration, the models the variants name are taken as given.
        named = {model for e in document.variants.values() for model in e.choices} or {"-"}
        models = {model: {"upstreams": ["http://-"]} for model in named}
        config = parse_config({"models": models, **raw})
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


def add_check_config_command(sub: Any) -> None:
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path, nargs="?", help="the file (or --config FILE)")
    add_config_flag(check)
    check.set_defaults(func=cmd_check_config)
