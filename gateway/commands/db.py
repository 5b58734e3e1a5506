"""`llama-gateway db migrate`: apply every installed package's SQL migrations.

Packages register the package that holds their `migrations/NNN_name.sql` files in the
`llama_gateway.migrations` entry-point group (this project: auth's keys, usage). All of
them go to one database, PostgreSQL at `storage.database_url` or the embedded SQLite
file; versions share its `schema_migrations` table, so two packages never reuse a number.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from gateway.commands import add_config_flag, admin_config, explained, run
from gateway.db import (
    Migration,
    MigrationError,
    load_migrations,
    migrate_postgres,
    migrate_sqlite,
    open_postgres_pool,
    open_sqlite,
)

GROUP = "llama_gateway.migrations"


def registered() -> list[Migration]:
    """Every registered package's migrations, in version order; a clash is an error."""
    owners: dict[int, str] = {}
    found: list[Migration] = []
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        package = entry.value.split(":")[0]
        for migration in load_migrations(package):
            if migration.version in owners:
                raise MigrationError(
                    f"migration version {migration.version} is used by both "
                    f"{owners[migration.version]} and {package}"
                )
            owners[migration.version] = package
            found.append(migration)
    return sorted(found)


async def migrate(database_url: str | None, sqlite_path: Path) -> tuple[str, list[Migration]]:
    """Apply what is pending; returns (where, the migrations this call applied)."""
    migrations = registered()
    if database_url:
        pool = await open_postgres_pool(database_url, max_size=1)
        try:
            return "PostgreSQL", await migrate_postgres(pool, migrations)
        finally:
            await pool.close()
    db = await open_sqlite(sqlite_path)
    try:
        return str(sqlite_path), await migrate_sqlite(db, migrations)
    finally:
        await db.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    config, _ = admin_config(args)
    storage = config.storage
    try:
        with explained(config):
            where, applied = run(migrate(storage.database_url, storage.sqlite_path))
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for migration in applied:
        print(f"applied {migration.version:03d}_{migration.name}")
    print(f"{where}: schema up to date ({len(applied)} migrations applied)")
    return 0


def add_db_command(sub: Any) -> None:
    db = sub.add_parser("db", help="database maintenance")
    add_config_flag(db)
    actions = db.add_subparsers(dest="action", required=True)
    migrate_cmd = actions.add_parser("migrate", help="apply pending SQL migrations")
    add_config_flag(migrate_cmd)
    migrate_cmd.set_defaults(func=cmd_migrate)
