"""The retrier's record of its decisions: what waits, what is parked, what was done.

The delays themselves are held by RabbitMQ; this store is what makes a
decision happen once (its id is derived from the failure) and what the
operator commands (`dimsebus retries ...`) list and change. One SQLite file,
shared by the running retrier and the CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from uuid import UUID

from schemas import events as ev
from services.sql import connect_sqlite

State = Literal["scheduled", "parked", "requeued"]

_SCHEMA = """
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


@dataclass(frozen=True, slots=True)
class RetryItem:
    """One decision: the failed sub-operations, and the resend command that retries them."""

    id: UUID
    state: State
    published: bool
    failed_attempt: int
    status: int | None
    reason: str
    retry_at: dt.datetime | None
    step_ms: int | None
    decided_at: dt.datetime
    command: ev.ResendSubOperations

    @property
    def data(self) -> ev.ResendData:
        """What the command asks the node to do."""
        return self.command.data


class RetryStore:
    """Decisions by id in one SQLite file; safe across threads."""

    def __init__(self, path: Path) -> None:
        self._db = connect_sqlite(path, _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def add(self, item: RetryItem) -> RetryItem:
        """Record ``item`` unless a decision with its id exists; return the one recorded."""
        data = item.data
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO retries (id, state, published, node_id, operation_kind, "
                "operation_id, destination_ae_title, sop_instance_uids, failed_attempt, status, "
                "reason, retry_at, step_ms, decided_at, command) "
                "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def mark_published(self, item_id: UUID) -> None:
        """The decision's events and command are confirmed by the broker."""
        self._update("UPDATE retries SET published = 1 WHERE id = ?", (str(item_id),))

    def set_state(self, item_id: UUID, state: State) -> None:
        """Move a decision to ``state``."""
        self._update("UPDATE retries SET state = ? WHERE id = ?", (state, str(item_id)))

    def items(self, states: tuple[State, ...] = ("scheduled", "parked")) -> list[RetryItem]:
        """Decisions in ``states``, oldest first."""
        marks = ", ".join("?" * len(states))
        return self._select(f"WHERE state IN ({marks}) ORDER BY decided_at, id", states)

    def find(self, prefix: str) -> list[RetryItem]:
        """Decisions whose id starts with ``prefix``."""
        return self._select("WHERE id LIKE ? ORDER BY decided_at", (prefix + "%",))

    def delete(self, states: tuple[State, ...]) -> int:
        """Forget every decision in ``states``; how many there were."""
        marks = ", ".join("?" * len(states))
        with self._lock, self._db:
            cursor = self._db.execute(f"DELETE FROM retries WHERE state IN ({marks})", states)
        return cursor.rowcount

    def _update(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock, self._db:
            self._db.execute(sql, params)

    def _select(self, where: str, params: tuple[object, ...]) -> list[RetryItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, state, published, failed_attempt, status, reason, retry_at, step_ms, "
                f"decided_at, command FROM retries {where}",
                params,
            ).fetchall()
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
