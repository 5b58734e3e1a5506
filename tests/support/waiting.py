"""Waiting, bounded, for what other tasks and processes do."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


async def eventually(check: Callable[[], Any], seconds: float = 60) -> None:
    """Poll `check()` (awaited when it returns an awaitable) until true; the bound only
    keeps a broken test from hanging, it asserts nothing about speed."""
    for _ in range(int(seconds / 0.02)):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {seconds:g} s")
