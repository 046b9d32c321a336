"""Waiting on something another process does: poll with a deadline.

The one place that waits between looks. Temporal has no push for "this query
now says X" (and a subprocess has none for "this file exists"), so callers
poll; they pass what to look at and how long it may take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T]], *, timeout: float, interval: float = 0.1) -> T:
    """Call `check` until it returns something truthy, at most `timeout` seconds.

    Returns that value, or the last (falsy) one when the deadline passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(min(interval, max(deadline - time.monotonic(), 0)))
