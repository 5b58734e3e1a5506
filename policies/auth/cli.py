"""`llama-gateway keys create | list | revoke`: API keys in the configured key store."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.commands import add_config_flag, admin_config, explained, run
from gateway.config import ConfigError, config_path
from policies.auth.keys import ApiKey, KeyStore, open_store
from policies.auth.text import MAX_CHARS

_DURATION = re.compile(r"^(\d+)([hdw])$")
_EXPIRY_FORMS = "give a duration like 30d, 12h, 2w or a date like 2027-01-31"


def expiry(value: str) -> datetime:
    """`30d`, `12h`, `2w`, or an ISO date/time (UTC when no zone is given), in the future:
    a key born expired would be refused by every gateway without anyone noticing."""
    try:
        moment = _moment(value)
    except OverflowError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is too far away; {_EXPIRY_FORMS}") from exc
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {_EXPIRY_FORMS}") from exc
    if moment <= datetime.now(UTC):
        raise argparse.ArgumentTypeError(f"{value!r} is not in the future; {_EXPIRY_FORMS}")
    return moment


def _moment(value: str) -> datetime:
    match = _DURATION.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        hours = {"h": 1, "d": 24, "w": 24 * 7}[unit] * amount
        return datetime.now(UTC) + timedelta(hours=hours)
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def owner(value: str) -> str:
    """Who the key is for: shown by `keys list`, written to usage rows and logs, so it must
    be visible text (no control, invisible or undecodable characters) of a sane length."""
    text = value.strip()
    if not text:
        raise argparse.ArgumentTypeError(
            "the owner is empty: name the person or service the key is for (--owner alice)"
        )
    if not text.isprintable():  # also false for lone surrogates (undecodable argv bytes)
        raise argparse.ArgumentTypeError(
            f"{text!r} holds control or invisible characters: use plain text"
        )
    if len(text) > MAX_CHARS:
        raise argparse.ArgumentTypeError(
            f"the owner is longer than {MAX_CHARS} characters: use a shorter name"
        )
    return text


async def _with_store(args: argparse.Namespace, action: Any) -> int:
    config, document = admin_config(args)
    if getattr(args, "tier", None):
        _check_tier(args, document.tiers)
    storage = config.storage
    store: KeyStore = open_store(storage.database_url, storage.sqlite_path)
    with explained(config):  # the database down, or lost on the way: one line
        await store.start()
        try:
            result: int = await action(store)
            return result
        finally:
            await store.close()


def _check_tier(args: argparse.Namespace, tiers: Mapping[str, Any]) -> None:
    """A key of a tier the gateway does not know is refused on every request: say so now."""
    if not tiers:
        source = config_path(getattr(args, "config", None)) or "the defaults (no --config)"
        raise ConfigError(
            "--tier",
            [f"no tiers are configured in {source}: add a tiers section to its policy document"],
        )
    if args.tier not in tiers:
        raise ConfigError("--tier", [f"unknown tier {args.tier!r}; tiers are {sorted(tiers)}"])


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
    create.add_argument("--owner", type=owner, required=True, help="who the key is for")
    create.add_argument("--expires", type=expiry, help="30d, 12h, 2w or an ISO date")
    create.set_defaults(func=cmd_create)
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(func=cmd_list)
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_revoke)
    for action in (create, listing, revoke):
        add_config_flag(action)
