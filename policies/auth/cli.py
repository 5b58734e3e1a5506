"""`llama-gateway keys create | list | revoke`: API keys in the configured key store."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.cli import add_config_flag, admin_config, run
from gateway.config import ConfigError
from policies.auth.keys import ApiKey, KeyStore, open_store

_DURATION = re.compile(r"^(\d+)([hdw])$")


def expiry(value: str) -> datetime:
    """`30d`, `12h`, `2w`, or an ISO date/time (UTC when no zone is given)."""
    match = _DURATION.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        hours = {"h": 1, "d": 24, "w": 24 * 7}[unit] * amount
        return datetime.now(UTC) + timedelta(hours=hours)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give a duration like 30d, 12h, 2w or a date like 2027-01-31"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _with_store(args: argparse.Namespace, action: Any) -> int:
    config, document = admin_config(args)
    if getattr(args, "tier", None) and document.tiers and args.tier not in document.tiers:
        raise ConfigError(
            "--tier", [f"unknown tier {args.tier!r}; tiers are {sorted(document.tiers)}"]
        )
    storage = config.storage
    store: KeyStore = open_store(storage.database_url, storage.data_path / "gateway.db")
    await store.start()
    try:
        result: int = await action(store)
        return result
    finally:
        await store.close()


def _row(key: ApiKey) -> str:
    expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
    state = (
        "revoked" if key.revoked else ("expired" if not key.usable(datetime.now(UTC)) else "active")
    )
    created = key.created_at.isoformat(timespec="seconds")
    return f"{key.id:<14}{state:<9}{key.tier:<14}{created:<27}{expires:<27}{key.owner}"


def cmd_create(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        secret, key = await store.create(args.owner, args.tier, args.expires)
        print(secret)
        print(
            f"# id {key.id}, tier {key.tier}, owner {key.owner}; shown once: store it now",
            flush=True,
        )
        return 0

    code: int = run(_with_store(args, action))
    return code


def cmd_list(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        print(f"{'ID':<14}{'STATE':<9}{'TIER':<14}{'CREATED':<27}{'EXPIRES':<27}OWNER")
        for key in await store.list():
            print(_row(key))
        return 0

    code: int = run(_with_store(args, action))
    return code


def cmd_revoke(args: argparse.Namespace) -> int:
    async def action(store: KeyStore) -> int:
        if not await store.revoke(args.id):
            print(f"no key with id {args.id!r}; `llama-gateway keys list` shows the ids")
            return 1
        print(f"revoked {args.id}; every gateway refuses it within a few seconds")
        return 0

    code: int = run(_with_store(args, action))
    return code


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    add_config_flag(keys)
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tier", required=True)
    create.add_argument("--owner", required=True)
    create.add_argument("--expires", type=expiry, help="30d, 12h, 2w or an ISO date")
    create.set_defaults(func=cmd_create)
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(func=cmd_list)
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_revoke)
    for action in (create, listing, revoke):
        add_config_flag(action)
