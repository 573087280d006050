"""The durable outbox: events wait in SQLite until the broker has confirmed them.

``Outbox.append`` runs on pynetdicom's threads and costs one SQLite commit
(WAL, ``synchronous=NORMAL``: a committed row survives ``kill -9`` of the
process; only an OS crash can lose the last commits). It never touches the
broker. ``OutboxRelay`` runs on the asyncio loop: it publishes the oldest rows
with confirms and deletes a row only after its confirm, so an event is always
either confirmed on the broker or still in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from schemas.envelope import CloudEvent
from services.bus.codec import build_message
from services.bus.connection import confirming_channel, connect
from services.bus.publisher import Publisher
from services.bus.topology import EVENTS_EXCHANGE, declare_topology

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    correlation_id TEXT,
    time TEXT NOT NULL,
    body BLOB NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event awaiting its confirm."""

    seq: int
    event_id: str
    type: str
    routing_key: str
    correlation_id: str | None
    time: str
    body: bytes


class Outbox:
    """A thread-safe SQLite spool of encoded events, oldest first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def close(self) -> None:
        """Close the file; rows stay for the next start."""
        with self._lock:
            self._db.close()

    def on_append(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the appending thread) after every append."""
        self._listeners.append(listener)

    def append(self, events: Iterable[CloudEvent]) -> None:
        """Spool events durably, in one transaction; a repeated event id is ignored."""
        rows = [
            (
                str(e.id),
                e.type,
                e.routing_key,
                e.correlation_id,
                e.time.isoformat(),
                e.model_dump_json().encode(),
            )
            for e in events
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO outbox "
                "(event_id, type, routing_key, correlation_id, time, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("COMMIT")
        for listener in self._listeners:
            listener()

    def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` rows."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, type, routing_key, correlation_id, time, body "
                "FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    def remove(self, seqs: list[int]) -> None:
        """Forget rows whose events the broker confirmed."""
        if not seqs:
            return
        with self._lock:
            self._db.execute(
                f"DELETE FROM outbox WHERE seq IN ({', '.join('?' * len(seqs))})", seqs
            )

    def depth(self) -> int:
        """How many events await their confirm."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def read_depth(path: Path) -> int:
    """The depth of the outbox file at ``path``, read without opening it for writing."""
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


class OutboxRelay:
    """Publishes the outbox to ``dimsebus.events`` with confirms, through outages."""

    def __init__(self, outbox: Outbox, amqp_url: str, *, name: str, window: int = 256) -> None:
        self._outbox = outbox
        self._url = amqp_url
        self._name = name
        self._window = window
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.published = 0
        outbox.on_append(self._notify)

    def _notify(self) -> None:
        if not self._wake.is_set():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set, reconnecting as long as it takes."""
        delay = 0.5
        while not stop.is_set():
            try:
                connection = await connect(self._url, self._name)
            except Exception as exc:
                log.warning("broker unreachable (%r); outbox depth %d", exc, self._outbox.depth())
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, 10.0)
                continue
            async with connection:
                try:
                    await self._drain_forever(connection, stop)
                    delay = 0.5
                except Exception as exc:  # a broker that is still starting, a closed channel
                    log.warning(
                        "relay interrupted (%r); outbox depth %d", exc, self._outbox.depth()
                    )
                    await _sleep_unless(stop, delay)
                    delay = min(delay * 2, 10.0)

    async def _drain_forever(
        self, connection: AbstractRobustConnection, stop: asyncio.Event
    ) -> None:
        # Declare on a channel of its own: a robust channel re-declares what it declared
        # when it reconnects, and a stream that is still starting would close it again.
        setup = await connection.channel()
        await declare_topology(setup)
        await setup.close()
        channel = await confirming_channel(connection)
        publisher = Publisher(channel, window=self._window, retry_for=5.0)
        while not stop.is_set():
            if channel.is_closed:
                return  # reconnect from scratch
            self._wake.clear()
            sent = await self.drain_once(publisher)
            if not sent:
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    [waiter, asyncio.ensure_future(stop.wait())],
                    timeout=1.0,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()

    async def drain_once(self, publisher: Publisher) -> int:
        """Publish the oldest rows; delete those confirmed. Returns how many were confirmed."""
        rows = await asyncio.to_thread(self._outbox.peek, self._window * 4)
        if not rows:
            return 0
        results = await asyncio.gather(
            *(self._publish(publisher, row) for row in rows), return_exceptions=True
        )
        confirmed = [row.seq for row, result in zip(rows, results, strict=True) if result is None]
        await asyncio.to_thread(self._outbox.remove, confirmed)
        self.published += len(confirmed)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning(
                "%d of %d events not confirmed (%r); outbox depth %d",
                len(failures),
                len(rows),
                failures[0],
                self._outbox.depth(),
            )
            await asyncio.sleep(1.0)
        return len(confirmed)

    @staticmethod
    async def _publish(publisher: Publisher, row: OutboxRow) -> None:
        message = build_message(
            row.body,
            row.event_id,
            row.type,
            dt.datetime.fromisoformat(row.time),
            row.correlation_id,
        )
        await publisher.send(message, EVENTS_EXCHANGE, row.routing_key)

    async def flush(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the outbox to empty; True when it did."""
        try:
            async with asyncio.timeout(within):
                while await asyncio.to_thread(self._outbox.depth):
                    self._notify()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            return False
        return True


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
