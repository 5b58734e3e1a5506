"""Lua scripts on the shared Redis client, for the policies and the core alike.

Scripts are package data files, read and hashed once; calls go by EVALSHA and a script
the server does not know (NOSCRIPT: a restarted or flushed Redis) is loaded and the call
retried once. Every call is bounded in time; an unreachable or slow Redis surfaces as
`Unavailable`, and the first failure of an incident and the recovery are logged once, by
the logger and with the consequence its user gives.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Protocol

from gateway.redis_client import ConnectionLost, ReplyError, Unreachable

PROBE_SECONDS = 0.5


class Unavailable(Exception):
    """Redis did not answer in time, or not at all."""

    def __init__(self, message: str, *, maybe_ran: bool = False) -> None:
        super().__init__(message)
        # The call reached Redis and may have run (no answer in time, or the connection
        # was lost with it in flight): its effects may stand.
        self.maybe_ran = maybe_ran


class _NoScript(Exception):
    """EVALSHA named a script the server does not have."""


class Script:
    def __init__(self, package: str, name: str) -> None:
        """The script `<name>.lua` of `package`'s folder `scripts`."""
        self.name = name
        self.text = (files(package) / "scripts" / f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


class Client(Protocol):
    async def call(self, *args: Any) -> Any: ...

    def node(self, args: tuple[Any, ...]) -> str:
        """Where the call `args` would go: "" for a single Redis (or a whole cluster), a
        cluster node's address otherwise."""
        ...

    def abort(self, *args: Any) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Outage:
    since: float
    probe_at: float
    failures: int = 1


def where(url: str | None) -> str:
    """The Redis address for logs, without credentials."""
    if url is None:
        return "embedded store"
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("?")[0].partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


class Backend:
    """Runs scripts and commands on one Redis client and keeps track of outages."""

    def __init__(
        self,
        client: Client,
        timeout: float,
        where: str,
        scripts: Iterable[Script],
        log: logging.Logger,
        consequence: str,
    ) -> None:
        self.client = client
        self.timeout = timeout  # for a whole call, connecting included
        self.where = where
        self.scripts = tuple(scripts)
        self.log = log
        self.consequence = consequence  # what an outage means, for its log line
        # Outages by node (`Client.node`): while one lasts, calls to that node fail at once
        # and one call per `PROBE_SECONDS` tries it, so an outage costs requests no
        # waiting, and the keys of a cluster's other nodes go on working.
        self.outages: dict[str, _Outage] = {}

    async def load(self) -> None:
        """Register the scripts (best effort: a Redis down at start-up is not fatal)."""
        try:
            for script in self.scripts:
                await self._bounded(("SCRIPT", "LOAD", script.text))
        except Unavailable:
            pass  # logged; EVALSHA loads them on first use

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> list[int]:
        call = ("EVALSHA", script.sha, len(keys), *keys, *args)
        self._gate(call)
        try:
            result = await self._bounded(call)
        except _NoScript:
            self.log.info(
                "Redis lacks the %s script (restarted or flushed); loading it", script.name
            )
            try:
                await self._bounded(("SCRIPT", "LOAD", script.text))
                result = await self._bounded(call)
            except _NoScript as exc:  # loaded, yet unknown: a misbehaving server
                self._failed(call, exc)
                raise Unavailable(str(exc)) from exc
        if self.outages:
            self._recovered(call)
        return [int(x) for x in result] if isinstance(result, list) else [int(result)]

    async def command(self, *args: Any) -> Any:
        """One plain command, under the same bounds and outage tracking as the scripts."""
        self._gate(args)
        result = await self._bounded(args)
        if self.outages:
            self._recovered(args)
        return result

    def _gate(self, call: tuple[Any, ...]) -> None:
        """While the node of `call` is failing, fail at once, except one call per
        `PROBE_SECONDS`."""
        if self.outages:
            outage = self.outages.get(self.client.node(call))
            if outage is not None:
                now = time.monotonic()
                if now < outage.probe_at:
                    outage.failures += 1
                    raise Unavailable("Redis is failing; next try shortly")
                outage.probe_at = now + PROBE_SECONDS

    async def ping(self) -> bool:
        """Whether Redis answers now (for readiness probes); a success ends an outage."""
        try:
            await self._bounded(("PING",))
        except Unavailable:
            return False
        if self.outages:
            self._recovered(("PING",))
        return True

    async def _bounded(self, call: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.client.call(*call)
        except TimeoutError as exc:
            self.client.abort(*call)  # the next call starts afresh, not behind a stuck one
            self._failed(call, exc)
            raise Unavailable(f"no answer within {self.timeout:g} s", maybe_ran=True) from exc
        except ReplyError as exc:
            if str(exc).startswith("NOSCRIPT"):
                raise _NoScript(str(exc)) from exc
            self._failed(call, exc)
            raise Unavailable(f"Redis answered: {exc}") from exc
        except (Unreachable, OSError) as exc:
            self._failed(call, exc)
            lost = isinstance(exc, ConnectionLost)
            raise Unavailable(f"{exc.__class__.__name__}: {exc}", maybe_ran=lost) from exc

    def _failed(self, call: tuple[Any, ...], exc: BaseException) -> None:
        node = self.client.node(call)
        outage = self.outages.get(node)
        if outage is not None:
            outage.failures += 1
            return
        now = time.monotonic()
        self.outages[node] = _Outage(now, now + PROBE_SECONDS)
        self.log.error(
            "Redis at %s failed (%s: %s); %s until it answers again",
            self._at(node),
            exc.__class__.__name__,
            str(exc) or "no answer in time",
            self.consequence,
        )

    def _recovered(self, call: tuple[Any, ...]) -> None:
        """A call to the node of `call` succeeded: its outage is over, and so is one of
        the whole cluster (its keyless calls failed) if one stood."""
        node = self.client.node(call)
        for each in {node, ""}:
            outage = self.outages.pop(each, None)
            if outage is not None:
                self.log.warning(
                    "Redis at %s answers again after %.1f s; %d calls failed meanwhile",
                    self._at(each),
                    time.monotonic() - outage.since,
                    outage.failures,
                )

    def _at(self, node: str) -> str:
        return f"{self.where} (node {node})" if node else self.where
