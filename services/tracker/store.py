"""Where the tracker keeps its state: moves and the log offset, committed together.

A batch of events is applied and saved in one transaction with the offset of
its last event, so a crash never applies an event twice nor skips one: on
restart the tracker reads the log from the offset after the saved one.
SQLite by default; PostgreSQL with a ``postgresql://`` URL. Both implement
the same small port and pass the same contract tests.
"""

from __future__ import annotations

import abc
import json
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import is_not
from typing import Any
from uuid import UUID

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.leadership import LEADERS_SQL
from dimsebus.services.migrations import Migration, Schema
from dimsebus.services.sql import Database, Fence, open_database
from dimsebus.services.tracker.progress import (
    InstanceOutcome,
    MoveKey,
    MoveState,
    categories,
    counts,
    named_instances,
)
from dimsebus.services.tracker.views import move_row, settled_outcome, source_ae_title

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
# Migration 2: a move's instances and the ids of the events folded into it get a row
# each, so a batch writes the few that changed, not the whole move again (issue 21).
# What a move of an older release kept in its JSON moves into the rows.
_PARTS = """
CREATE TABLE IF NOT EXISTS tracker_instances (
    source TEXT NOT NULL,
    move_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (source, move_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS tracker_seen (
    source TEXT NOT NULL,
    move_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (source, move_id, event_id)
);
"""
_PARTS_FROM_JSON_SQLITE = """
INSERT INTO tracker_instances (source, move_id, sop_instance_uid, outcome)
SELECT m.source, m.move_id, i.key, i.value
FROM tracker_moves m, json_each(m.state, '$.instances') i;
INSERT INTO tracker_seen (source, move_id, event_id)
SELECT m.source, m.move_id, e.value
FROM tracker_moves m, json_each(m.state, '$.seen') e;
UPDATE tracker_moves SET state = json_remove(state, '$.instances', '$.seen')
"""
_PARTS_FROM_JSON_POSTGRESQL = """
INSERT INTO tracker_instances (source, move_id, sop_instance_uid, outcome)
SELECT m.source, m.move_id, i.key, i.value::text
FROM tracker_moves m, jsonb_each(m.state::jsonb -> 'instances') i;
INSERT INTO tracker_seen (source, move_id, event_id)
SELECT m.source, m.move_id, e.value
FROM tracker_moves m, jsonb_array_elements_text(m.state::jsonb -> 'seen') e;
UPDATE tracker_moves SET state = ((state::jsonb - 'instances') - 'seen')::text
"""
# Migration 4: what the web page's list filters, orders and pages by, kept beside each move
# (issue 23): its AE titles, its outcome as of its last event, whether it turns stalled
# when no event follows, and its row of the list (JSON); indexed, so a page of the list
# is read by SQL and not over every move. ``fill_listing`` fills the rows of moves saved
# before it.
_LISTING = """
ALTER TABLE tracker_moves ADD COLUMN requestor_ae TEXT;
ALTER TABLE tracker_moves ADD COLUMN source_ae TEXT;
ALTER TABLE tracker_moves ADD COLUMN destination_ae TEXT;
ALTER TABLE tracker_moves ADD COLUMN outcome TEXT;
ALTER TABLE tracker_moves ADD COLUMN stalls INTEGER;
ALTER TABLE tracker_moves ADD COLUMN last_event_at TEXT;
ALTER TABLE tracker_moves ADD COLUMN summary TEXT;
CREATE INDEX IF NOT EXISTS tracker_moves_started ON tracker_moves (started_at, move_id);
CREATE INDEX IF NOT EXISTS tracker_moves_outcome ON tracker_moves (outcome, started_at);
CREATE INDEX IF NOT EXISTS tracker_moves_requestor ON tracker_moves (requestor_ae, started_at);
CREATE INDEX IF NOT EXISTS tracker_moves_source ON tracker_moves (source_ae, started_at);
CREATE INDEX IF NOT EXISTS tracker_moves_destination ON tracker_moves (destination_ae, started_at);
CREATE INDEX IF NOT EXISTS tracker_moves_stalls ON tracker_moves (stalls, last_event_at)
"""
SCHEMA = Schema(
    "tracker",
    (
        Migration(1, "moves, checkpoint, rejected entries", _TABLES),
        Migration(
            2,
            "a row per instance and per event of a move",
            _PARTS + _PARTS_FROM_JSON_SQLITE,
            _PARTS + _PARTS_FROM_JSON_POSTGRESQL,
        ),
        # Migration 3: the active copy's term, checked by every save (issue 22).
        Migration(3, "terms of the active tracker", LEADERS_SQL),
        Migration(4, "the web page's list: AE titles, outcome, summary; indexes", _LISTING),
    ),
)
# The parts of a move kept in rows of their own, not in its JSON.
_IN_ROWS = {"instances", "seen"}


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
        self,
        moves: Iterable[MoveState],
        offset: int,
        rejected: Iterable[Rejected] = (),
        before: Mapping[MoveKey, MoveState | None] | None = None,
        folded: Mapping[MoveKey, Sequence[CloudEvent]] | None = None,
    ) -> None:
        """Store changed moves, skipped entries and the new checkpoint in one transaction.

        ``before``: each move as the store last had it (None: not yet), so that only
        what changed since is written; without it, the whole of every move is.
        ``folded``: the events folded into each move since ``before``; only their
        instances (``named_instances``) and ids are looked at, not all of a large move's.
        """

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
    def fill_listing(self) -> int:
        """Give moves saved before the web page's list had columns theirs; how many."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abc.abstractmethod
    def fenced(self, fence: Fence | None) -> None:
        """Make each save check ``fence`` (this tracker's term), or stop checking (None)."""

    def find(self, move_id: str) -> MoveState | None:
        """The move whose id starts with ``move_id`` (ids are long; prefixes are handy)."""
        matches = [m for m in self.all_moves() if str(m.move_id).startswith(move_id.lower())]
        return matches[0] if len(matches) == 1 else None


_UPSERT_INSTANCE = (
    "INSERT INTO tracker_instances (source, move_id, sop_instance_uid, outcome) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (source, move_id, sop_instance_uid) "
    "DO UPDATE SET outcome = excluded.outcome"
)
_INSERT_SEEN = (
    "INSERT INTO tracker_seen (source, move_id, event_id) VALUES (?, ?, ?) "
    "ON CONFLICT (source, move_id, event_id) DO NOTHING"
)
_UPSERT_MOVE = (
    "INSERT INTO tracker_moves (source, move_id, started_at, state, requestor_ae, source_ae, "
    "destination_ae, outcome, stalls, last_event_at, summary) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (source, move_id) DO UPDATE SET started_at = excluded.started_at, "
    "state = excluded.state, requestor_ae = excluded.requestor_ae, "
    "source_ae = excluded.source_ae, destination_ae = excluded.destination_ae, "
    "outcome = excluded.outcome, stalls = excluded.stalls, "
    "last_event_at = excluded.last_event_at, summary = excluded.summary"
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
        self._tallies = _Tallies()

    def checkpoint(self) -> int | None:
        row = self.db.execute(
            "SELECT log_offset FROM tracker_checkpoint WHERE name = 'log'"
        ).fetchone()
        return int(row[0]) if row else None

    def load(self, key: MoveKey) -> MoveState | None:
        where = (key[0], str(key[1]))
        row = self.db.execute(
            "SELECT state FROM tracker_moves WHERE source = ? AND move_id = ?", where
        ).fetchone()
        if row is None:
            return None
        instances = self.db.execute(
            "SELECT sop_instance_uid, outcome FROM tracker_instances "
            "WHERE source = ? AND move_id = ?",
            where,
        )
        seen = self.db.execute(
            "SELECT event_id FROM tracker_seen WHERE source = ? AND move_id = ?", where
        )
        return _assembled(row[0], list(instances), [event_id for (event_id,) in seen])

    def save(
        self,
        moves: Iterable[MoveState],
        offset: int,
        rejected: Iterable[Rejected] = (),
        before: Mapping[MoveKey, MoveState | None] | None = None,
        folded: Mapping[MoveKey, Sequence[CloudEvent]] | None = None,
    ) -> None:
        rows, instances, seen = [], [], []
        for move in moves:
            key = (move.source, move.move_id)
            old = before.get(key) if before is not None else None
            events = folded.get(key) if folded is not None else None
            changed = _changed_instances(move, old, events)
            rows.append(_row(move, self._tallies.after(key, old, move, changed)))
            row_key = (move.source, str(move.move_id))
            instances += [(*row_key, u, move.instances[u].model_dump_json()) for u in changed]
            seen += _new_seen(move, old, events)
        skipped = [(r.offset, r.routing_key, r.reason[:2000]) for r in rejected]
        with self.db.transaction() as cursor:
            cursor.executemany(self.db.sql(_UPSERT_MOVE), rows)
            if instances:
                cursor.executemany(self.db.sql(_UPSERT_INSTANCE), instances)
            if seen:
                cursor.executemany(self.db.sql(_INSERT_SEEN), seen)
            if skipped:
                cursor.executemany(self.db.sql(_INSERT_REJECTED), skipped)
            cursor.execute(self.db.sql(_UPSERT_CHECKPOINT), (offset,))

    def rejected(self) -> list[Rejected]:
        rows = self.db.execute(
            "SELECT log_offset, routing_key, reason FROM tracker_rejected ORDER BY log_offset"
        )
        return [Rejected(int(offset), key, reason) for offset, key, reason in rows]

    def all_moves(self) -> list[MoveState]:
        return self._moves("", ())

    def moves_starting_with(self, prefix: str) -> list[MoveState]:
        pattern = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._moves("WHERE move_id LIKE ? ESCAPE '\\'", (pattern + "%",))

    def _moves(self, where: str, params: tuple[str, ...]) -> list[MoveState]:
        """The moves ``where`` selects, oldest first, each with its instances and events.

        ``where`` is one of the two constant clauses above, on ``move_id``, which the
        moves' table and their rows' tables all have."""
        rows = list(
            self.db.execute(
                f"SELECT source, move_id, state FROM tracker_moves {where} "
                "ORDER BY started_at, move_id",
                params,
            )
        )
        instances: dict[tuple[str, str], list[tuple[str, str]]] = {}
        seen: dict[tuple[str, str], list[str]] = {}
        for source, move_id, uid, outcome in self.db.execute(
            f"SELECT source, move_id, sop_instance_uid, outcome FROM tracker_instances {where}",
            params,
        ):
            instances.setdefault((source, move_id), []).append((uid, outcome))
        for source, move_id, event_id in self.db.execute(
            f"SELECT source, move_id, event_id FROM tracker_seen {where}",
            params,
        ):
            seen.setdefault((source, move_id), []).append(event_id)
        return [
            _assembled(state, instances.get((s, m), []), seen.get((s, m), []))
            for s, m, state in rows
        ]

    def fill_listing(self) -> int:
        """Give the moves saved before migration 4 their columns of the list; how many."""
        missing = self.db.execute("SELECT source, move_id FROM tracker_moves WHERE summary IS NULL")
        for source, move_id in missing:
            move = self.load((source, UUID(move_id)))
            if move is not None:
                self.db.execute(
                    "UPDATE tracker_moves SET requestor_ae = ?, source_ae = ?, "
                    "destination_ae = ?, outcome = ?, stalls = ?, last_event_at = ?, "
                    "summary = ? WHERE source = ? AND move_id = ?",
                    (*_listing(move), source, move_id),
                )
        return len(missing)

    def close(self) -> None:
        self.db.close()

    def fenced(self, fence: Fence | None) -> None:
        self.db.fence = fence


def open_store(db: str) -> TrackerStore:
    """``postgresql://...`` opens PostgreSQL; anything else is an SQLite file path.

    The moves are a projection of the log, committed with their checkpoint: rebuildable.
    """
    return SqlStore(open_database(db, SCHEMA, rebuildable=True))


def _row(move: MoveState, latest: Counter[str] | None = None) -> tuple[Any, ...]:
    started = move.started_at.isoformat() if move.started_at else None
    state = move.model_dump_json(exclude=_IN_ROWS)
    return (move.source, str(move.move_id), started, state, *_listing(move, latest))


def _listing(move: MoveState, latest: Counter[str] | None = None) -> tuple[Any, ...]:
    """The move's columns for the web page's list (migration 4); ``latest``: its
    instances' categories (``progress.categories``), if the caller keeps them."""
    tally = counts(move, latest)  # once: counting a large move's instances costs most
    settled, stalls = settled_outcome(move, tally)
    last = move.last_event_at.isoformat() if move.last_event_at else None
    summary = json.dumps(move_row(move, settled, tally))
    ae_titles = (move.requestor_ae_title, source_ae_title(move), move.destination_ae_title)
    return (*ae_titles, settled, int(stalls), last, summary)


def _changed_instances(
    move: MoveState, old: MoveState | None, events: Sequence[CloudEvent] | None
) -> list[str]:
    """The instances whose outcome is not the one ``old`` had (all without it), looked
    for among those ``events`` name when given, else among all the move's."""
    known = old.instances if old is not None else {}
    if events is not None and old is not None:
        named = {uid for event in events for uid in named_instances(event)}
        return sorted(
            uid
            for uid in named.intersection(move.instances)
            if move.instances[uid] is not known.get(uid)
        )
    # compared in C (map, compress): all of a large move's instances
    uids = move.instances.keys()
    return list(compress(uids, map(is_not, map(known.get, uids), move.instances.values())))


class _Tallies:
    """The categories of each open move's instances as last saved, kept up to date from
    what each save changed: a large move's instances are not counted again every batch.

    A tally is kept with the instances it counted (the move's dict, which the fold never
    changes: it makes a new one), and used only for the move whose ``before`` has that
    very dict; any other move is counted afresh. A finished move's tally is let go, and
    no more than ``KEPT`` are kept.
    """

    KEPT = 256

    def __init__(self) -> None:
        self._kept: OrderedDict[MoveKey, tuple[Mapping[str, InstanceOutcome], Counter[str]]]
        self._kept = OrderedDict()

    def after(
        self, key: MoveKey, old: MoveState | None, move: MoveState, changed: Iterable[str]
    ) -> Counter[str]:
        """``categories(move)``, from the tally of ``old`` and the ``changed`` instances."""
        kept = self._kept.pop(key, None)
        if kept is not None and old is not None and kept[0] is old.instances:
            latest = kept[1].copy()
            for uid in changed:
                if (was := old.instances.get(uid)) is not None:
                    latest[was.category] -= 1
                latest[move.instances[uid].category] += 1
        else:
            latest = categories(move)
        if move.finished is None or move.finished.outcome is None:
            self._kept[key] = (move.instances, latest)
            while len(self._kept) > self.KEPT:
                self._kept.popitem(last=False)
        return latest


def _new_seen(
    move: MoveState, old: MoveState | None, events: Sequence[CloudEvent] | None
) -> list[tuple[str, ...]]:
    """Rows of the event ids ``old`` had not seen (all without it), looked for among
    ``events``' ids when given."""
    if old is None:
        fresh: Iterable[UUID] = move.seen
    elif events is not None:
        fresh = {event.id for event in events if event.id in move.seen} - old.seen
    else:
        fresh = move.seen - old.seen
    key = (move.source, str(move.move_id))
    return [(*key, str(event_id)) for event_id in fresh]


def _assembled(state: str, instances: list[tuple[str, str]], seen: list[str]) -> MoveState:
    """A move from its JSON and its rows of instances and event ids."""
    move = MoveState.model_validate_json(state)
    if not instances and not seen:
        return move
    outcomes = {uid: InstanceOutcome.model_validate_json(text) for uid, text in instances}
    # In one order whatever order the rows were written in (a rebuilt store's differs):
    # the same move reads, and dumps, the same.
    ids = sorted(move.seen | {UUID(event_id) for event_id in seen})
    return move.model_copy(
        update={
            "instances": dict(sorted({**move.instances, **outcomes}.items())),
            "seen": frozenset(ids),
        }
    )
