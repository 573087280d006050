"""The retrier's record of its decisions: what waits, what is parked, what was done.

The delays themselves are held by RabbitMQ; this store is what makes a
decision happen once (its id is derived from the failure) and what the
operator commands (`dimsebus retries ...`) list and change. One SQLite file,
shared by the running retrier and the CLI, or a ``postgresql://`` database that
several retriers share. Two retriers that hold the same decision (a redelivery
while the first one still works on it) do not both publish it: ``claim`` is a
conditional update, which one of them wins until its lease runs out.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from uuid import UUID

from dimsebus.schemas import events as ev
from dimsebus.services.migrations import Migration, Schema
from dimsebus.services.retrier.decisions import RetryItem, State
from dimsebus.services.sql import open_database

__all__ = ["SCHEMA", "RetryItem", "RetryStore", "State"]

# Migration 1 is the schema every release before versions made.
_TABLES = """
CREATE TABLE IF NOT EXISTS retries (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    node_id TEXT NOT NULL,
    operation_kind TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    destination_ae_title TEXT NOT NULL,
    sop_instance_uids TEXT NOT NULL,
    failed_attempt INTEGER NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    retry_at TEXT,
    step_ms INTEGER,
    decided_at TEXT NOT NULL,
    command TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS retries_by_state ON retries (state);
CREATE INDEX IF NOT EXISTS retries_by_operation ON retries (operation_id);
"""
# Migration 2: who publishes a decision now, and since when (issue 22).
_CLAIMS = """
ALTER TABLE retries ADD COLUMN claimed_by TEXT;
ALTER TABLE retries ADD COLUMN claimed_at TEXT
"""
SCHEMA = Schema(
    "retrier",
    (Migration(1, "decisions", _TABLES), Migration(2, "claims of the publishing retrier", _CLAIMS)),
)
_CLAIM = (
    "UPDATE retries SET claimed_by = ?, claimed_at = ? WHERE id = ? AND published = 0 "
    "AND (claimed_by IS NULL OR claimed_at < ?)"
)


class RetryStore:
    """Decisions by id in an SQLite file or a PostgreSQL database; safe across threads."""

    def __init__(self, db: Path | str) -> None:
        """``db``: an SQLite file, or a ``postgresql://`` URL."""
        self.db = open_database(str(db), SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def add(self, item: RetryItem) -> RetryItem:
        """Record ``item`` unless a decision with its id exists; return the one recorded."""
        data = item.data
        self.db.execute(
            "INSERT INTO retries (id, state, published, node_id, operation_kind, "
            "operation_id, destination_ae_title, sop_instance_uids, failed_attempt, status, "
            "reason, retry_at, step_ms, decided_at, command) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                str(item.id),
                item.state,
                data.node_id,
                data.operation.kind,
                str(data.operation.id),
                data.destination_ae_title,
                json.dumps(list(data.sop_instance_uids)),
                item.failed_attempt,
                item.status,
                item.reason,
                _iso(item.retry_at),
                item.step_ms,
                _iso(item.decided_at),
                item.command.model_dump_json(),
            ),
        )
        found = self.get(item.id)
        assert found is not None
        return found

    def get(self, item_id: UUID) -> RetryItem | None:
        """The decision with ``item_id``, if any."""
        rows = self._select("WHERE id = ?", (str(item_id),))
        return rows[0] if rows else None

    def claim(self, item_id: UUID, holder: str, now: dt.datetime, lease: dt.timedelta) -> bool:
        """Make ``holder`` the one that publishes the decision, unless it is published or
        claimed less than ``lease`` ago (by anyone: one handler of this process, too);
        whether ``holder`` has it."""
        at, expired = (
            now.isoformat("T", "microseconds"),
            (now - lease).isoformat("T", "microseconds"),
        )
        with self.db.transaction() as cursor:
            done = cursor.execute(self.db.sql(_CLAIM), (holder, at, str(item_id), expired))
            return int(done.rowcount) == 1

    def release(self, item_id: UUID, holder: str) -> None:
        """``holder`` could not publish the decision: let anyone claim it at once."""
        self.db.execute(
            "UPDATE retries SET claimed_by = NULL, claimed_at = NULL "
            "WHERE id = ? AND claimed_by = ?",
            (str(item_id), holder),
        )

    def mark_published(self, item_id: UUID) -> None:
        """The decision's events and command are confirmed by the broker."""
        self.db.execute("UPDATE retries SET published = 1 WHERE id = ?", (str(item_id),))

    def set_state(self, item_id: UUID, state: State) -> None:
        """Move a decision to ``state``."""
        self.db.execute("UPDATE retries SET state = ? WHERE id = ?", (state, str(item_id)))

    def items(self, states: tuple[State, ...] = ("scheduled", "parked")) -> list[RetryItem]:
        """Decisions in ``states``, oldest first."""
        marks = ", ".join("?" * len(states))
        return self._select(f"WHERE state IN ({marks}) ORDER BY decided_at, id", states)

    def find(self, prefix: str) -> list[RetryItem]:
        """Decisions whose id starts with ``prefix`` (in any case; no wildcards)."""
        pattern = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._select("WHERE id LIKE ? ESCAPE '\\' ORDER BY decided_at", (pattern + "%",))

    def delete(self, states: tuple[State, ...]) -> int:
        """Forget every decision in ``states``; how many there were."""
        marks = ", ".join("?" * len(states))
        with self.db.transaction() as cursor:
            deleted = cursor.execute(
                self.db.sql(f"DELETE FROM retries WHERE state IN ({marks})"), states
            )
            return int(deleted.rowcount)

    def _select(self, where: str, params: tuple[object, ...]) -> list[RetryItem]:
        rows = self.db.execute(
            "SELECT id, state, published, failed_attempt, status, reason, retry_at, step_ms, "
            f"decided_at, command FROM retries {where}",
            params,
        )
        return [
            RetryItem(
                id=UUID(row[0]),
                state=row[1],
                published=bool(row[2]),
                failed_attempt=row[3],
                status=row[4],
                reason=row[5],
                retry_at=_time(row[6]),
                step_ms=row[7],
                decided_at=_time(row[8]) or dt.datetime.min,
                command=ev.ResendSubOperations.model_validate_json(row[9]),
            )
            for row in rows
        ]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None
