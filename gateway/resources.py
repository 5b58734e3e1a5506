"""Shared resources (database pools, key stores) that outlive policy reloads.

A policy asks for a resource by name with a factory; the first caller creates it, later
chains (after a reload) get the same one, and the application closes them at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.resources")


class Resources:
    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._lock = asyncio.Lock()

    async def get(
        self,
        name: str,
        create: Callable[[], Awaitable[T]],
        close: Callable[[T], Awaitable[None]],
    ) -> T:
        async with self._lock:
            if name not in self._items:
                item = await create()
                self._items[name] = item
                self._closers.append((name, lambda: close(item)))
            value: T = self._items[name]
            return value

    async def close(self) -> None:
        while self._closers:
            name, closer = self._closers.pop()
            self._items.pop(name, None)
            try:
                await closer()
            except Exception:
                log.exception("closing %s failed", name)
