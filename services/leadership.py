"""Active/standby for services that share a PostgreSQL database: one writer at a time.

The tracker and the audit service each keep one ordered state (the moves and the log
checkpoint; the hash chain), so two copies on one database must not both write. The
active one holds a PostgreSQL session advisory lock on a connection of its own; the
standby tries for it every ``poll`` seconds and takes over as soon as the active one's
connection is gone (a killed process's socket closes, and PostgreSQL drops its locks).
This works on any broker version (a stream's single active consumer needs RabbitMQ 3.11).

Each term of office bumps a number in ``dimsebus_leaders`` (the fencing token), and
the store's transactions check it (``sql.Fence``): a process whose lock connection
dropped cannot commit one more batch after another took over, even before it noticed.
The lock's key includes the database schema, so deployments (and tests) in their own
schemas do not exclude each other. An SQLite store has no standby: it is always active.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from dimsebus.services.clock import sleep_unless, utc_now
from dimsebus.services.sql import Fence, is_postgresql, masked_url

log = logging.getLogger(__name__)

Role = Literal["active", "standby"]
LEADERS_TABLE = "dimsebus_leaders"
# Migration text for the stores that may run active/standby (tracker, audit).
LEADERS_SQL = f"""
CREATE TABLE IF NOT EXISTS {LEADERS_TABLE} (
    name TEXT PRIMARY KEY,
    term BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since TEXT NOT NULL
)"""
_KEY = "SELECT hashtextextended('dimsebus.leader.' || %s || '.' || current_schema(), 0)"
_TAKE = f"""
INSERT INTO {LEADERS_TABLE} (name, term, holder, since) VALUES (%s, 1, %s, %s)
ON CONFLICT (name) DO UPDATE SET term = {LEADERS_TABLE}.term + 1,
    holder = excluded.holder, since = excluded.since
RETURNING term"""
# Server-side keepalives: a holder cut off by the network loses the lock in ~11 s, not hours.
_KEEPALIVES = (
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
)


class Leadership:
    """Who of the copies of ``name`` on one PostgreSQL database is active."""

    def __init__(
        self,
        url: str,
        name: str,
        holder: str,
        poll: float = 0.5,
        check: float = 1.0,
        rest: float = 2.0,
    ) -> None:
        """``poll``: seconds between a standby's tries; ``check``: between the active one's
        checks of its connection; ``rest``: how long a copy that lost the lock waits before
        it tries again, so that a healthy standby takes over first."""
        self.url, self.name, self.poll, self.check, self.rest = url, name, poll, check, rest
        self.holder = f"{holder}@{socket.gethostname()}:{os.getpid()}"
        self.role: Role = "standby"
        self.term: int | None = None
        self._conn: Any = None
        self._key: int | None = None

    @property
    def active(self) -> bool:
        """Whether this process holds the lock now."""
        return self.role == "active"

    def fence(self) -> Fence | None:
        """What the store's transactions check while this term lasts."""
        return None if self.term is None else Fence(LEADERS_TABLE, self.name, self.term)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lock (True), or ``stop`` is set (False)."""
        announced = unreachable = False
        while not stop.is_set():
            try:
                if await self._try():
                    return True
                unreachable = False
            except Exception as exc:  # the database is down: a standby keeps trying
                if not unreachable:  # once per outage, not every poll
                    log.warning("%s: cannot ask %s for the lock (%s)", self.name, self._where, exc)
                unreachable = True
                await self._drop()
            if not announced:
                self._announce("standby", "another copy holds the lock")
                announced = True
            await sleep_unless(stop, self.poll)
        return False

    async def _try(self) -> bool:
        import psycopg

        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=5,
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                application_name=f"dimsebus-{self.name}-leader",
            )
            for statement in _KEEPALIVES:
                await self._conn.execute(statement)
            row = await (await self._conn.execute(_KEY, (self.name,))).fetchone()
            self._key = int(row[0])
        cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
        row = await cursor.fetchone()
        if not row or not row[0]:
            return False
        # The new term waits for a transaction of the previous holder that read its term.
        row = await (
            await self._conn.execute(_TAKE, (self.name, self.holder, utc_now().isoformat()))
        ).fetchone()
        self.term = int(row[0])
        self._announce("active", f"took the lock, term {self.term}")
        return True

    async def watch(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Check the lock's connection every ``check`` s until ``stop``; set ``lost`` (and
        stand by) the moment it fails."""
        while not stop.is_set():
            await sleep_unless(stop, self.check)
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(self._conn.execute("SELECT 1"), self.check * 3)
            except Exception as exc:
                self._announce("standby", f"lost the lock's connection ({exc or type(exc)})")
                await self._drop()
                lost.set()
                return

    async def release(self) -> None:
        """Give the lock up (closing its connection releases it too)."""
        if self.role == "active":
            self._announce("standby", "released the lock")
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn, self.term, self.role = self._conn, None, None, "standby"
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    @property
    def _where(self) -> str:
        return masked_url(self.url)

    def _announce(self, role: Role, why: str) -> None:
        self.role = role
        log.info(
            "%s is %s: %s",
            self.name,
            role,
            why,
            extra={"service": self.name, "role": role, "term": self.term, "holder": self.holder},
        )


def leadership_for(db: str, name: str, holder: str) -> Leadership | None:
    """A ``Leadership`` for a PostgreSQL ``db``; None (always active) for an SQLite file."""
    return Leadership(db, name, holder) if is_postgresql(db) else None


async def while_active(
    leadership: Leadership | None,
    stop: asyncio.Event,
    run: Callable[[asyncio.Event, Fence | None], Awaitable[None]],
) -> None:
    """Run ``run(term_stop, fence)`` for each term this process is active, until ``stop``.

    ``term_stop`` is set when ``stop`` is, or at once when the lock's connection fails;
    then this process stands by again and waits for the next term.
    """
    if leadership is None:
        await run(stop, None)
        return
    try:
        while await leadership.acquire(stop):
            term_stop = asyncio.Event()
            watcher = asyncio.create_task(leadership.watch(stop, term_stop))
            ender = asyncio.create_task(stop.wait())
            ender.add_done_callback(functools.partial(_set, term_stop))
            try:
                await run(term_stop, leadership.fence())
            finally:
                watcher.cancel()
                ender.cancel()
                await leadership.release()
            await sleep_unless(stop, leadership.rest)
    finally:
        await leadership.release()


def _set(event: asyncio.Event, _: object) -> None:
    event.set()
