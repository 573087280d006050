"""The shell's source of time and ids (pure code takes both as arguments), and its waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from uuid import UUID

from dimsebus.schemas.ids import uuid7_from


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_id() -> UUID:
    """A fresh time-ordered UUIDv7 (its random bits from the OS's CSPRNG, drawn in bulk)."""
    return uuid7_from(time.time_ns() // 1_000_000, _random_bits())


class _RandomPool(threading.local):
    """Random bytes from ``os.urandom``, a few kilobytes at a time, one pool per thread.

    ``os.urandom`` per id is a system call that lets go of the GIL: on the DIMSE
    thread of a busy node, getting the GIL back made each id cost about 30 us
    (1 us alone). One call per 512 ids keeps the bits as random, and the cost off.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0


_ID_RANDOM_BYTES = 10  # 74 bits are used (uuid7_from)
_POOL = _RandomPool()


def _random_bits() -> int:
    pool = _POOL
    start = pool.offset
    if start + _ID_RANDOM_BYTES > len(pool.buffer):
        pool.buffer, start = os.urandom(_ID_RANDOM_BYTES * 512), 0
    pool.offset = start + _ID_RANDOM_BYTES
    return int.from_bytes(pool.buffer[start : start + _ID_RANDOM_BYTES])


def _fresh_pool_after_fork() -> None:
    """A forked child must not hand out the ids its parent's pool will."""
    global _POOL  # replaced whole: no thread of the child keeps the parent's bytes
    _POOL = _RandomPool()


os.register_at_fork(after_in_child=_fresh_pool_after_fork)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True if stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
