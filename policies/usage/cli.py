"""`llama-gateway usage`: the usage report from the configured store, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import orjson

from gateway.commands import add_config_flag, admin_config, explained, run
from gateway.config import GatewayConfig
from policies.usage.report import GROUPS, ReportError, as_json, format_table, parse_time
from policies.usage.schema import StoreUnavailable
from policies.usage.store import open_usage_store


async def _report(
    config: GatewayConfig, args: argparse.Namespace, since: datetime, until: datetime
) -> str:
    storage = config.storage
    store = open_usage_store(storage.database_url, storage.sqlite_path)
    # The embedded file is created on demand; PostgreSQL is migrated by `db migrate`.
    await store.connect(migrate=not storage.database_url)
    try:
        rows, total = await store.report(since, until, args.by)
    finally:
        await store.close()
    if args.json:
        return orjson.dumps(as_json(rows, total, since, until, args.by)).decode()
    return format_table(rows, total, args.by, since, until)


def cmd_usage(args: argparse.Namespace) -> int:
    config, _ = admin_config(args)
    try:
        since = parse_time(args.since, param="--since")
        now = datetime.now(since.tzinfo)
        until = parse_time(args.until, param="--until") if args.until else now
        with explained(config):  # an unreachable database: one line naming its setting
            print(run(_report(config, args, since, until)))
    except (ReportError, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    usage = sub.add_parser(
        "usage", help="usage report: requests, tokens, errors, cost, p50/p95 latency"
    )
    add_config_flag(usage)
    usage.add_argument("--since", default="24h", help="24h, 30m, 7d, 2w or an ISO date (24h)")
    usage.add_argument("--until", help="end of the range, same forms (default: now)")
    usage.add_argument("--by", choices=sorted(GROUPS), help="one line per key, user, tier, ...")
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.set_defaults(func=cmd_usage)
