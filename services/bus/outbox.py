"""The durable outbox: events wait in SQLite until the broker has confirmed them.

``Outbox.append`` runs on pynetdicom's threads and costs one SQLite commit
(WAL, ``synchronous=NORMAL``: a committed row survives ``kill -9`` of the
process; only an OS crash can lose the last commits). It never touches the
broker: ``dimsebus.services.bus.relay`` publishes the rows and deletes each one only
after its confirm, so an event is always confirmed on the broker or in the file.

A row holds an encoded event, or (``format`` set) a record of the facts from
which its relay makes the event: the node's pynetdicom threads spool every event
that way (``dimsebus.services.node.facts``), so that building and validating it
costs the relay's process, not the DICOM thread. The record carries the event's
id and time, so the event is the same whenever, and however often, it is made.
Rows of encoded events (``append``) are published as they are: other writers',
and those an earlier node spooled.

The file also holds the node's move journal (``dimsebus.services.node.journal``): the
C-MOVEs it serves, and which of their instances got a response event. The
outbox writes it itself, in the transaction of each row (``_journal``): a
response event notes its instance for its open move, a final one closes it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.wakeup import ArrivalBell
from dimsebus.services.errors import ConfigError
from dimsebus.services.migrations import Dialect, Migration, Schema
from dimsebus.services.sql import make_room_for, migrate_sqlite, unusable

# Migration 1 is the outbox of the first releases, written out; each later step is a
# change some release made, so that an outbox from before versions reads as how far it had
# come (``_unversioned``) and gets only the steps it lacks.
_ROWS = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    correlation_id TEXT,
    time TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS relay_stats (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
)
"""
_JOURNAL = """
ALTER TABLE outbox ADD COLUMN subject TEXT;
CREATE TABLE IF NOT EXISTS move_journal (
    operation_id TEXT PRIMARY KEY,
    requested BLOB NOT NULL,
    matched TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS move_answered (
    operation_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (operation_id, sop_instance_uid)
) WITHOUT ROWID
"""
# An event appended twice is spooled once. Records get fresh ids when made, so they skip
# the index: one B-tree less to update on the DICOM thread's commit. The journal's
# triggers of earlier releases go: ``Outbox._journal`` writes the same rows explicitly.
_EXPLICIT = """
CREATE UNIQUE INDEX IF NOT EXISTS outbox_event_id ON outbox (event_id) WHERE format IS NULL;
DROP TRIGGER IF EXISTS move_journal_answered;
DROP TRIGGER IF EXISTS move_journal_closed
"""
_LATER_COLUMNS = ("subject", "sent_at", "format")  # added by migrations 2, 3 and 4


def _unversioned(db: sqlite3.Connection, dialect: Dialect) -> int:
    """How far an outbox from before versions had come: 0 for a new file."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
    if not columns:
        return 0
    added = itertools.takewhile(lambda column: column in columns, _LATER_COLUMNS)
    return 1 + sum(1 for _ in added)


SCHEMA = Schema(
    "outbox",
    (
        Migration(1, "rows and relay statistics", _ROWS),
        Migration(2, "subjects and the move journal", _JOURNAL),
        Migration(3, "when a row was sent", "ALTER TABLE outbox ADD COLUMN sent_at TEXT"),
        Migration(4, "spooled formats", "ALTER TABLE outbox ADD COLUMN format TEXT"),
        Migration(5, "event ids once, the journal written explicitly", _EXPLICIT),
    ),
    unversioned=_unversioned,
)


def migrate_outbox(db: sqlite3.Connection, path: Path) -> None:
    """Bring the outbox file ``path`` open in ``db`` to this release's schema."""
    migrate_sqlite(db, SCHEMA, f"outbox {str(path)!r}")


ANSWERS = frozenset({"dicom.cstore.response.received", "dicom.cstore.response.missing"})
"""Event types that note, for an open move, that its instance (the subject) got a response."""
CLOSES = frozenset({"dicom.move.completed", "dicom.move.interrupted"})
"""Event types that close their move (correlation id) in the journal."""
_NOTE_ANSWERED = (
    "INSERT OR IGNORE INTO move_answered SELECT ?1, ?2 "
    "WHERE EXISTS (SELECT 1 FROM move_journal WHERE operation_id = ?1)"
)
OPEN_MOVE = "INSERT OR REPLACE INTO move_journal VALUES (?, ?, ?)"
"""A move opened in the journal: operation id, its requested event's JSON, matched (JSON)."""
_FORGET_ANSWERED = "DELETE FROM move_answered WHERE operation_id = ?"
_FORGET_MOVE = "DELETE FROM move_journal WHERE operation_id = ?"
CONFIRM_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class RelayStats:
    """What a relay reported into its outbox: published events, and confirm latency."""

    depth: int = 0
    published: float = 0.0
    confirm_seconds: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()


def _bucket_rows(latencies: list[float]) -> list[tuple[str, float]]:
    """Cumulative histogram increments (Prometheus ``le`` buckets) for ``latencies``.

    Counted by bisecting the sorted latencies, not by comparing each with each bound;
    a bucket no latency fell into is left out (adding nothing to it changes nothing).
    """
    ordered = sorted(latencies)
    counts = [(f"le:{le}", float(bisect.bisect_right(ordered, le))) for le in CONFIRM_BUCKETS]
    rows = [(name, count) for name, count in counts if count]
    if ordered:
        rows.append(("le:+Inf", float(len(ordered))))
    return rows


_ROW_COLUMNS = "seq, event_id, type, routing_key, correlation_id, time, body, format"
"""An ``OutboxRow``'s columns, in its fields' order."""

_INSERT = (
    "INSERT OR IGNORE INTO outbox "
    "(event_id, type, routing_key, correlation_id, time, body, subject, format) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event awaiting its confirm: encoded, or recorded in ``format`` (see module doc)."""

    seq: int
    event_id: str
    type: str
    routing_key: str
    correlation_id: str | None
    time: str
    body: bytes
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """The facts of one event, to spool as they are; the relay makes the event of them.

    ``type``, ``correlation_id`` and ``subject`` are what the event will have unless
    the facts fail its validation: the outbox's move journal (``Outbox._journal``)
    reads them, the relay publishes what the event says. ``format`` names how the
    relay reads ``body`` (the node's: ``dimsebus.services.node.facts``).
    """

    format: str
    event_id: str
    type: str
    correlation_id: str | None
    time: str
    subject: str
    body: bytes


BUSY_TIMEOUT = 5.0
"""Seconds an outbox method waits for the other connections' writes to end, at most
(sqlite3's default busy timeout)."""
_FIRST_PAUSE, _LAST_PAUSE = 20e-6, 1e-3

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _retried_while_busy(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """An outbox method, called again while another connection holds the file's write lock.

    The DIMSE thread's commits and the relay's take and remove meet (one commit in 40 at
    full C-STORE speed): SQLite's own busy handler then sleeps 1 ms, then 2, 5... before
    its next try, for a lock held some 50 us, and the C-STORE waited that long. On the
    DICOM path (``Outbox(dicom_path=True)``) the method fails at once (``busy_timeout``
    0), rolls back what it began, and is called again after 20 us, then twice as long
    each time up to 1 ms, for ``BUSY_TIMEOUT`` seconds in all. It sleeps holding no lock
    of its own. Elsewhere SQLite's handler has waited already, and the error is raised.
    """

    @functools.wraps(method)
    def retried(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        outbox = args[0]
        assert isinstance(outbox, Outbox)
        pause, deadline = _FIRST_PAUSE, 0.0
        while True:
            try:
                return method(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or not outbox._dicom_path:
                    raise
                outbox._rolled_back()
                deadline = deadline or time.monotonic() + BUSY_TIMEOUT
                if time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)

    return retried


class Outbox:
    """A thread-safe SQLite spool of encoded events, oldest first."""

    def __init__(self, path: Path, *, dicom_path: bool = False) -> None:
        """Open (or create) the outbox at ``path``.

        ``dicom_path`` is for the writer on the DICOM path. It leaves copying the WAL into
        the database (and that copy's fsync) to the relay's connection, which runs
        SQLite's automatic checkpoints after its deletes. And a method of it that meets
        another connection's write tries again within microseconds
        (``_retried_while_busy``); other connections (the relay's) wait as SQLite does,
        1 ms and more, which costs a process that batches fewer wake-ups. A path that
        cannot hold an outbox (a folder, another kind of file, no write access) is a
        ``ConfigError`` naming it and why.
        """
        self.path = path
        self._dicom_path = dicom_path
        db: sqlite3.Connection | None = None
        try:
            db = self._db = _open(path)
            self._prepare()
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            raise ConfigError(f"outbox {str(path)!r}: {unusable(path, exc)}") from exc
        self._lock = threading.Lock()
        self._arrivals = ArrivalBell(path)  # rung after each commit: wakes the relay
        self._skipping = False  # rows left out of ``take`` (``skip``), in a temporary table

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._dicom_path:  # the relay's connection checkpoints
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        migrate_outbox(self._db, self.path)
        if self._dicom_path:
            # From here on, a statement that meets another connection's write fails at
            # once, and the method is tried again sooner than SQLite would.
            self._db.execute("PRAGMA busy_timeout = 0")

    def _rolled_back(self) -> None:
        """End a transaction a busy file cut short, so that it can be begun again."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Close the file; rows stay for the next start."""
        with self._lock:
            self._db.close()
            self._arrivals.close()

    def append(self, events: Iterable[CloudEvent]) -> None:
        """Spool events durably, in one transaction; a repeated event id is ignored."""
        self._insert([_row(e) for e in events])

    def append_opening(self, requested: CloudEvent | Record, matched: Sequence[str]) -> None:
        """Spool a C-MOVE's requested event and open its move in the journal, in one commit.

        ``matched`` are the instances the move will send: those without a response
        event when the node starts again were cut off (``dimsebus.services.node.recovery``).
        The journal keeps the requested event's body: its JSON, or its record's.
        """
        row = _row(requested) if isinstance(requested, CloudEvent) else _record_row(requested)
        opened = (requested.correlation_id, row[5], json.dumps(list(matched)))
        self._insert([row], opened)

    def append_record(self, record: Record) -> None:
        """Spool one event's facts durably (one commit); its relay makes the event."""
        self._insert([_record_row(record)])

    def append_records(self, records: Sequence[Record]) -> None:
        """Spool the facts of several events durably, in one transaction."""
        self._insert([_record_row(record) for record in records])

    @_retried_while_busy
    def _insert(
        self, rows: Sequence[tuple[object, ...]], opened: tuple[object, ...] | None = None
    ) -> None:
        """Insert ``rows`` (``_INSERT``'s columns) and their journal entries, in one commit.

        ``opened`` is a move to open in the journal first (``OPEN_MOVE``'s values).
        """
        answered, closed = _journal(rows)
        with self._lock:
            if len(rows) == 1 and not answered and not closed and opened is None:
                self._db.execute(_INSERT, rows[0])  # one statement, its own transaction
                self._arrivals.ring()
                return
            self._db.execute("BEGIN")
            try:
                if opened is not None:
                    self._db.execute(OPEN_MOVE, opened)
                self._db.executemany(_INSERT, rows)
                self._db.executemany(_NOTE_ANSWERED, answered)
                self._db.executemany(_FORGET_ANSWERED, closed)
                self._db.executemany(_FORGET_MOVE, closed)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._arrivals.ring()

    @_retried_while_busy
    def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` rows."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    @_retried_while_busy
    def rows(self, seqs: Sequence[int]) -> list[OutboxRow]:
        """The rows ``seqs`` that are still spooled, oldest first."""
        if not seqs:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE seq IN ({', '.join('?' * len(seqs))}) "
                "ORDER BY seq",
                list(seqs),
            ).fetchall()
        return [OutboxRow(*row) for row in rows]

    @_retried_while_busy
    def take(self, limit: int, at: dt.datetime) -> list[OutboxRow]:
        """The oldest ``limit`` rows, noted as being published at ``at``, in one statement.

        A relay that dies before their confirms leaves them noted: the next one looks for
        them on the log before it publishes them again (``in_flight``). A row taken before
        keeps its first time.
        """
        skipped = "WHERE seq NOT IN (SELECT seq FROM temp.skipped) " if self._skipping else ""
        with self._lock:
            rows = self._db.execute(
                "UPDATE outbox SET sent_at = coalesce(sent_at, ?) "
                f"WHERE seq IN (SELECT seq FROM outbox {skipped}ORDER BY seq LIMIT ?) "
                f"RETURNING {_ROW_COLUMNS}",
                (at.isoformat(), limit),
            ).fetchall()
        rows.sort()  # RETURNING's order is not the table's; seq comes first, and is unique
        return [OutboxRow(*row) for row in rows]

    @_retried_while_busy
    def skip(self, seqs: Sequence[int]) -> None:
        """Leave the rows ``seqs`` out of this object's later ``take``s; they stay spooled,
        not in flight (their relay could not make their events, so never sent them)."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS skipped (seq INTEGER PRIMARY KEY)")
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO temp.skipped VALUES (?)", [(seq,) for seq in seqs]
            )
            self._db.executemany(
                "UPDATE outbox SET sent_at = NULL WHERE seq = ?", [(seq,) for seq in seqs]
            )
            self._db.execute("COMMIT")
            self._skipping = True

    @_retried_while_busy
    def remove(
        self, seqs: list[int], latencies: list[float] | None = None, *, counted: bool = True
    ) -> None:
        """Forget rows whose events the broker confirmed; count them and their confirm times
        (unless ``counted`` is false: events counted when first published)."""
        if not seqs:
            return
        latencies = latencies or []
        increments = [
            ("published", float(len(seqs))),
            ("confirm_seconds", sum(latencies)),
            *_bucket_rows(latencies),
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                f"DELETE FROM outbox WHERE seq IN ({', '.join('?' * len(seqs))})", seqs
            )
            if counted:
                self._db.execute(  # one statement for every counter (not one each)
                    "INSERT INTO relay_stats (name, value) VALUES "
                    f"{', '.join(['(?, ?)'] * len(increments))} "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    [value for increment in increments for value in increment],
                )
            self._db.execute("COMMIT")

    @_retried_while_busy
    def in_flight(self) -> tuple[dict[int, str], dt.datetime | None]:
        """Rows published without a confirm yet (seq -> event id), and the earliest time."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, sent_at FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchall()
        since = min((dt.datetime.fromisoformat(row[2]) for row in rows), default=None)
        return {row[0]: row[1] for row in rows}, since

    @_retried_while_busy
    def checkpoint(self) -> None:
        """Copy the WAL into the database now, without waiting for readers (PASSIVE)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @_retried_while_busy
    def depth(self) -> int:
        """How many events await their confirm."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def _row(event: CloudEvent) -> tuple[object, ...]:
    """The outbox row of an encoded event, in ``_INSERT``'s columns."""
    return (
        str(event.id),
        event.type,
        event.routing_key,
        event.correlation_id,
        event.time.isoformat(),
        event.model_dump_json().encode(),
        event.subject,
        None,
    )


def _record_row(record: Record) -> tuple[object, ...]:
    """The outbox row of a record, in ``_INSERT``'s columns."""
    return (
        record.event_id,
        record.type,
        record.type,
        record.correlation_id,
        record.time,
        record.body,
        record.subject,
        record.format,
    )


def _journal(
    rows: Sequence[tuple[object, ...]],
) -> tuple[list[tuple[object, object]], list[tuple[object]]]:
    """The move journal's part of spooling ``rows``: (operation, instance) answered, closed.

    Rows are ``_INSERT``'s columns: type at 1, correlation id at 3, subject at 6.
    Noting an answer for a move that is not open (a store job's) writes nothing.
    """
    answered = [(row[3], row[6]) for row in rows if row[1] in ANSWERS and row[3] is not None]
    closed = [(row[3],) for row in rows if row[1] in CLOSES and row[3] is not None]
    return answered, closed


def _open(path: Path) -> sqlite3.Connection:
    make_room_for(path)
    return sqlite3.connect(path, check_same_thread=False, isolation_level=None)


def read_relay_stats(path: Path) -> RelayStats:
    """The depth of the outbox at ``path`` and what its relay reported, read-only."""
    if not path.exists():
        return RelayStats()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        try:
            values = dict(db.execute("SELECT name, value FROM relay_stats").fetchall())
        except sqlite3.OperationalError:  # an outbox written before relay_stats existed
            values = {}
    buckets = (
        *((le, float(values.get(f"le:{le}", 0.0))) for le in CONFIRM_BUCKETS),
        (float("inf"), float(values.get("le:+Inf", 0.0))),
    )
    return RelayStats(
        depth=depth,
        published=float(values.get("published", 0.0)),
        confirm_seconds=float(values.get("confirm_seconds", 0.0)),
        buckets=buckets,
    )


def read_depth(path: Path) -> int:
    """The depth of the outbox file at ``path``, read without opening it for writing."""
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
