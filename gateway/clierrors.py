"""What a command says when a service it needs cannot be used: one line, no traceback.

The gateway does not start without the dependencies its policies open at start-up (the
API key database): it exits with code 1 and a line that names the service, the setting
that points at it and what to do. Restarting, with back-off, is the job of whatever runs
it (Kubernetes, systemd, compose); once running, a lost dependency turns `/ready` to 503.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from gateway.config import GatewayConfig

# What a dependency that is down, refusing or resetting connections raises (OSError
# includes ConnectionError and TimeoutError); anything else is a bug and keeps its traceback.
DEPENDENCY_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error)
_LISTEN_ERRNOS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


class Unavailable(Exception):
    """A service the command needs cannot be used; the message says which and what to do."""


@contextlib.contextmanager
def explained(config: GatewayConfig) -> Iterator[None]:
    """Turn a dependency failure inside the block into `Unavailable` with a clear message."""
    try:
        yield
    except DEPENDENCY_ERRORS as exc:
        raise Unavailable(explain(exc, config)) from exc


def explain(exc: BaseException, config: GatewayConfig) -> str:
    modules = _modules(exc)
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    storage = config.storage
    if "asyncpg" in modules:
        return (
            f"the PostgreSQL database at {_address(storage.database_url)} "
            f"(storage.database_url) cannot be used: {reason}; start it or correct "
            "storage.database_url (or --database-url), then try again"
        )
    data_dir = Path(storage.data_dir).expanduser()
    if "aiosqlite" in modules or isinstance(exc, sqlite3.Error) or _within(exc, data_dir):
        return (
            f"the data directory {data_dir} (storage.data_dir) cannot be used: {reason}; "
            "make storage.data_dir a directory this user can write"
        )
    if "aiohttp" in modules and getattr(exc, "errno", None) in _LISTEN_ERRNOS:
        server = config.server
        return (
            f"cannot listen on {server.host}:{server.port} (server.host, server.port): "
            f"{reason}; stop what uses it or choose another --port or --host"
        )
    return f"a service the command needs cannot be used: {reason}"


def _modules(exc: BaseException) -> set[str]:
    """The top-level packages whose code the exception passed through (its whole chain)."""
    found: set[str] = set()
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # a chain set by hand may loop
        chain.append(link)
        for frame, _ in traceback.walk_tb(link.__traceback__):
            found.add(str(frame.f_globals.get("__name__", "")).split(".")[0])
        link = link.__cause__ or link.__context__
    return found


def _within(exc: BaseException, directory: Path) -> bool:
    filename = getattr(exc, "filename", None)
    return isinstance(filename, str) and Path(filename).is_relative_to(directory)


def _address(url: str | None) -> str:
    """host:port of a database URL, never its user name or password."""
    try:
        parts = urlsplit(url or "")
        return f"{parts.hostname}:{parts.port or 5432}"
    except ValueError:  # several hosts, or a malformed port: the setting is named anyway
        return "the configured address"
