"""The durable outbox: events wait in SQLite until the broker has confirmed them.

``Outbox.append`` runs on pynetdicom's threads and costs one SQLite commit
(WAL, ``synchronous=NORMAL``: a committed row survives ``kill -9`` of the
process; only an OS crash can lose the last commits). It never touches the
broker: ``services.bus.relay`` publishes the rows and deletes each one only
after its confirm, so an event is always confirmed on the broker or in the file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from schemas.envelope import CloudEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    correlation_id TEXT,
    time TEXT NOT NULL,
    body BLOB NOT NULL
)
"""


_INSERT = (
    "INSERT OR IGNORE INTO outbox (event_id, type, routing_key, correlation_id, time, body) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


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

    def close(self) -> None:
        """Close the file; rows stay for the next start."""
        with self._lock:
            self._db.close()

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
            if len(rows) == 1:  # the capture's case: one response, one commit
                self._db.execute(_INSERT, rows[0])
            else:
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, rows)
                self._db.execute("COMMIT")

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
