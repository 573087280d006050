"""The shell's source of time and ids (pure code takes both as arguments), and its waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from uuid import UUID

from schemas.ids import uuid7_from


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_id() -> UUID:
    """A fresh time-ordered UUIDv7."""
    return uuid7_from(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10)))


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True if stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
