"""The audit trail's store: append-only chained records, and the syslog spool.

SQLite by default, PostgreSQL with a ``postgresql://`` URL. Records are only
ever inserted: a new record takes the next sequence number and the hash of
the last one in the same transaction, so concurrent writers cannot fork the
chain (the sequence number is the primary key; the loser retries). An event
id that is already recorded is skipped, which makes appending idempotent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.audit.chain import GENESIS, AuditRecord, next_record
from dimsebus.services.leadership import LEADERS_SQL
from dimsebus.services.migrations import Migration, Schema
from dimsebus.services.sql import Database, open_database

# Migration 1 is the schema every release before versions made.
_TABLES = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    event_time TEXT NOT NULL,
    source TEXT NOT NULL,
    operation_id TEXT,
    association_id TEXT,
    study_uid TEXT,
    sop_instance_uid TEXT,
    peer_ae_title TEXT,
    status INTEGER,
    event TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_operation ON audit_records (operation_id);
CREATE INDEX IF NOT EXISTS audit_by_association ON audit_records (association_id);
CREATE INDEX IF NOT EXISTS audit_by_study ON audit_records (study_uid);
CREATE INDEX IF NOT EXISTS audit_by_instance ON audit_records (sop_instance_uid);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (event_time);
CREATE TABLE IF NOT EXISTS audit_spool (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    frame TEXT NOT NULL,
    sent_at TEXT
);
"""
SCHEMA = Schema(
    "audit",
    (
        Migration(1, "chained records, syslog spool", _TABLES),
        # The active copy's term, checked by every append (issue 22).
        Migration(2, "terms of the active audit service", LEADERS_SQL),
    ),
)
FIRST_OF = (
    "SELECT event_id FROM audit_records WHERE association_id = ? "
    "AND study_uid || '' = ? ORDER BY seq LIMIT 1"
)
_COLUMNS = [field.name for field in dataclasses.fields(AuditRecord)]


@dataclass(frozen=True, slots=True)
class Query:
    """What ``dimsebus audit query`` filters by; None matches anything."""

    study: str | None = None
    instance: str | None = None
    move: str | None = None
    peer: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses, params = ["1 = 1"], []
        for column, value in (
            ("study_uid", self.study),
            ("sop_instance_uid", self.instance),
            ("peer_ae_title", self.peer),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.move is not None:
            clauses.append("operation_id LIKE ?")
            params.append(self.move.lower() + "%")
        if self.since is not None:
            clauses.append("event_time >= ?")
            params.append(self.since.astimezone(dt.UTC).isoformat())
        if self.until is not None:
            clauses.append("event_time < ?")
            params.append(self.until.astimezone(dt.UTC).isoformat())
        return " AND ".join(clauses), params


class AuditStore:
    """Append-only audit records and the outgoing syslog spool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, db: str) -> AuditStore:
        """An SQLite file path, or a ``postgresql://`` URL."""
        return cls(open_database(db, SCHEMA))

    def close(self) -> None:
        """Release the connection."""
        self.db.close()

    def append(self, events: list[CloudEvent]) -> list[AuditRecord]:
        """Chain the events not yet recorded onto the trail; the records that were added."""
        added: list[AuditRecord] = []
        with self.db.transaction() as cursor:
            head = cursor.execute(
                "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS)
            for event in events:
                known = cursor.execute(
                    self.db.sql("SELECT 1 FROM audit_records WHERE event_id = ?"), (str(event.id),)
                ).fetchone()
                if known or any(r.event_id == str(event.id) for r in added):
                    continue
                seq += 1
                record = next_record(seq, prev_hash, event)
                cursor.execute(self.db.sql(_INSERT), _row(record))
                added.append(record)
                prev_hash = record.hash
        return added

    def records(self, query: Query = Query(), batch: int = 1000) -> Iterator[AuditRecord]:
        """Matching records in chain order, read ``batch`` at a time."""
        where, params = query.where()
        after = 0
        while True:
            rows = self.db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM audit_records WHERE {where} AND seq > ? "
                f"ORDER BY seq LIMIT {int(batch)}",
                [*params, after],
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(row)
            after = int(rows[-1][0])

    def association_events(self, association_id: str, batch: int = 500) -> Iterator[dict[str, Any]]:
        """The recorded events of one association, in chain order, read ``batch`` at a time.

        Not all at once: an association of a 10,000-instance move is 10,000 events, and
        holding them all when it is released grew the audit service by 21 MB (bench.soak).
        Their positions first (small), then their bodies by position, a batch a query.
        """
        seqs = [
            int(seq)
            for (seq,) in self.db.execute(
                "SELECT seq FROM audit_records WHERE association_id = ? ORDER BY seq",
                (association_id,),
            ).fetchall()
        ]
        for at in range(0, len(seqs), batch):
            chunk = seqs[at : at + batch]
            rows = self.db.execute(
                "SELECT event FROM audit_records "
                f"WHERE seq IN ({', '.join('?' * len(chunk))}) ORDER BY seq",
                chunk,
            ).fetchall()
            for (event,) in rows:
                yield json.loads(event)

    def first_of(self, association_id: str, study_uid: str) -> str | None:
        """The id of the first recorded event of a study on an association."""
        # FIRST_OF's ``study_uid || ''`` is not a column SQLite can look up by index, so it
        # searches the association's rows, not every record of the study (a study moved
        # 200 times: 100,000 rows a response, and the audit fell behind by hours in
        # bench.soak).
        row = self.db.execute(FIRST_OF, (association_id, study_uid)).fetchone()
        return str(row[0]) if row else None

    def count(self) -> int:
        """How many records the trail holds."""
        return int(self.db.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0])

    # -- the syslog spool ---------------------------------------------------------------------

    def spool(self, messages: list[tuple[str, str, dt.datetime, bytes]]) -> None:
        """Queue (id, kind, time, frame) messages for the collector; a known id is skipped."""
        with self.db.transaction() as cursor:
            for message_id, kind, at, frame in messages:
                cursor.execute(
                    self.db.sql(
                        "INSERT INTO audit_spool (id, kind, created_at, frame) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (id) DO NOTHING"
                    ),
                    (message_id, kind, at.isoformat(), frame.decode()),
                )

    def pending(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """Messages not yet delivered, oldest first."""
        rows = self.db.execute(
            "SELECT id, frame FROM audit_spool WHERE sent_at IS NULL "
            f"ORDER BY created_at, id LIMIT {int(limit)}"
        ).fetchall()
        return [(str(row[0]), str(row[1]).encode()) for row in rows]

    def mark_sent(self, message_ids: list[str], at: dt.datetime) -> None:
        """The collector accepted these messages."""
        with self.db.transaction() as cursor:
            for message_id in message_ids:
                cursor.execute(
                    self.db.sql("UPDATE audit_spool SET sent_at = ? WHERE id = ?"),
                    (at.isoformat(), message_id),
                )

    def spool_depth(self) -> int:
        """How many messages wait for the collector."""
        return int(
            self.db.execute("SELECT COUNT(*) FROM audit_spool WHERE sent_at IS NULL").fetchone()[0]
        )


_INSERT = (
    f"INSERT INTO audit_records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


def _row(record: AuditRecord) -> tuple[Any, ...]:
    values = dataclasses.asdict(record)
    values["event"] = json.dumps(record.event, sort_keys=True)
    return tuple(values[name] for name in _COLUMNS)


def _record(row: tuple[Any, ...]) -> AuditRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["event"] = json.loads(values["event"])
    values["seq"] = int(values["seq"])
    return AuditRecord(**values)
