"""Where the tracker keeps its state: moves and the log offset, committed together.

A batch of events is applied and saved in one transaction with the offset of
its last event, so a crash never applies an event twice nor skips one: on
restart the tracker reads the log from the offset after the saved one.
SQLite by default; PostgreSQL with a ``postgresql://`` URL. Both implement
the same small port and pass the same contract tests.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dimsebus.services.migrations import Migration, Schema
from dimsebus.services.sql import Database, open_database
from dimsebus.services.tracker.progress import MoveKey, MoveState

# Migration 1 is the schema every release before versions made (tracker_rejected came
# later than the others: IF NOT EXISTS adds it to a database that lacks it).
_TABLES = """
CREATE TABLE IF NOT EXISTS tracker_moves (
    source TEXT NOT NULL,
    move_id TEXT NOT NULL,
    started_at TEXT,
    state TEXT NOT NULL,
    PRIMARY KEY (source, move_id)
);
CREATE TABLE IF NOT EXISTS tracker_checkpoint (
    name TEXT PRIMARY KEY,
    log_offset BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tracker_rejected (
    log_offset BIGINT PRIMARY KEY,
    routing_key TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""
SCHEMA = Schema("tracker", (Migration(1, "moves, checkpoint, rejected entries", _TABLES),))


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log entry that is not a valid event: where it is, and why it was skipped."""

    offset: int
    routing_key: str
    reason: str


class TrackerStore(abc.ABC):
    """The tracker's durable state."""

    @abc.abstractmethod
    def checkpoint(self) -> int | None:
        """The offset of the last event applied, or None before the first."""

    @abc.abstractmethod
    def load(self, key: MoveKey) -> MoveState | None:
        """One move's state."""

    @abc.abstractmethod
    def save(
        self, moves: Iterable[MoveState], offset: int, rejected: Iterable[Rejected] = ()
    ) -> None:
        """Store changed moves, skipped entries and the new checkpoint in one transaction."""

    @abc.abstractmethod
    def rejected(self) -> list[Rejected]:
        """The log entries skipped as invalid, oldest first (a stream cannot park them)."""

    @abc.abstractmethod
    def all_moves(self) -> list[MoveState]:
        """Every move, oldest first."""

    @abc.abstractmethod
    def moves_starting_with(self, prefix: str) -> list[MoveState]:
        """The moves whose id starts with ``prefix``, oldest first, without reading the others."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def find(self, move_id: str) -> MoveState | None:
        """The move whose id starts with ``move_id`` (ids are long; prefixes are handy)."""
        matches = [m for m in self.all_moves() if str(m.move_id).startswith(move_id.lower())]
        return matches[0] if len(matches) == 1 else None


_UPSERT_MOVE = (
    "INSERT INTO tracker_moves (source, move_id, started_at, state) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (source, move_id) DO UPDATE SET started_at = excluded.started_at, "
    "state = excluded.state"
)
_INSERT_REJECTED = (
    "INSERT INTO tracker_rejected (log_offset, routing_key, reason) VALUES (?, ?, ?) "
    "ON CONFLICT (log_offset) DO NOTHING"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO tracker_checkpoint (name, log_offset) VALUES ('log', ?) "
    "ON CONFLICT (name) DO UPDATE SET log_offset = excluded.log_offset"
)


class SqlStore(TrackerStore):
    """The store in an SQLite file or a PostgreSQL database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def checkpoint(self) -> int | None:
        row = self.db.execute(
            "SELECT log_offset FROM tracker_checkpoint WHERE name = 'log'"
        ).fetchone()
        return int(row[0]) if row else None

    def load(self, key: MoveKey) -> MoveState | None:
        row = self.db.execute(
            "SELECT state FROM tracker_moves WHERE source = ? AND move_id = ?",
            (key[0], str(key[1])),
        ).fetchone()
        return MoveState.model_validate_json(row[0]) if row else None

    def save(
        self, moves: Iterable[MoveState], offset: int, rejected: Iterable[Rejected] = ()
    ) -> None:
        rows = [_row(move) for move in moves]
        skipped = [(r.offset, r.routing_key, r.reason[:2000]) for r in rejected]
        with self.db.transaction() as cursor:
            cursor.executemany(self.db.sql(_UPSERT_MOVE), rows)
            if skipped:
                cursor.executemany(self.db.sql(_INSERT_REJECTED), skipped)
            cursor.execute(self.db.sql(_UPSERT_CHECKPOINT), (offset,))

    def rejected(self) -> list[Rejected]:
        rows = self.db.execute(
            "SELECT log_offset, routing_key, reason FROM tracker_rejected ORDER BY log_offset"
        )
        return [Rejected(int(offset), key, reason) for offset, key, reason in rows]

    def all_moves(self) -> list[MoveState]:
        rows = self.db.execute("SELECT state FROM tracker_moves ORDER BY started_at, move_id")
        return [MoveState.model_validate_json(row[0]) for row in rows]

    def moves_starting_with(self, prefix: str) -> list[MoveState]:
        pattern = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.db.execute(
            "SELECT state FROM tracker_moves WHERE move_id LIKE ? ESCAPE '\\' "
            "ORDER BY started_at, move_id",
            (pattern + "%",),
        )
        return [MoveState.model_validate_json(row[0]) for row in rows]

    def close(self) -> None:
        self.db.close()


def open_store(db: str) -> TrackerStore:
    """``postgresql://...`` opens PostgreSQL; anything else is an SQLite file path."""
    return SqlStore(open_database(db, SCHEMA))


def _row(move: MoveState) -> tuple[Any, ...]:
    started = move.started_at.isoformat() if move.started_at else None
    return (move.source, str(move.move_id), started, move.model_dump_json())
