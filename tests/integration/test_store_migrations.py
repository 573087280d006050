"""Every store opens a database of the release before versions, keeps its rows, refuses a newer.

The DDL below is what the release before versioned migrations made ("release N-1"),
copied here on purpose: it must not follow the stores' code. The migration runner's
own contract runs here on PostgreSQL (tests/unit/test_migrations.py has it on SQLite).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.audit.chain import GENESIS, AuditRecord, next_record
from dimsebus.services.audit.store import SCHEMA as AUDIT_SCHEMA
from dimsebus.services.audit.store import AuditStore
from dimsebus.services.errors import ConfigError
from dimsebus.services.migrations import VERSIONS_TABLE, Dialect, Schema
from dimsebus.services.retrier.store import SCHEMA as RETRIER_SCHEMA
from dimsebus.services.retrier.store import RetryItem, RetryStore
from dimsebus.services.tracker.progress import MoveState, apply
from dimsebus.services.tracker.store import SCHEMA as TRACKER_SCHEMA
from dimsebus.services.tracker.store import Rejected, open_store
from tests.unit.test_migrations import RunnerContract

START = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)

TRACKER_BEFORE_REJECTED = """
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
"""
TRACKER_RELEASE_N_1 = (
    TRACKER_BEFORE_REJECTED
    + """
CREATE TABLE IF NOT EXISTS tracker_rejected (
    log_offset BIGINT PRIMARY KEY,
    routing_key TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""
)
AUDIT_RELEASE_N_1 = """
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
RETRIER_RELEASE_N_1 = """
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

Rows = list[tuple[str, tuple[Any, ...]]]
Legacy = Callable[[str, Rows], None]


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def target(request: pytest.FixtureRequest, dialect: Dialect, tmp_path: Path) -> str:
    """An SQLite file path or a PostgreSQL URL, with nothing in it yet."""
    if dialect == "sqlite":
        return str(tmp_path / "state.sqlite")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def legacy(target: str, dialect: Dialect) -> Legacy:
    """Makes ``target`` a database of an older release: its DDL, then its rows."""

    def make(ddl: str, rows: Rows) -> None:
        statements = [s for s in ddl.split(";") if s.strip()]
        if dialect == "sqlite":
            with sqlite3.connect(target) as db:
                for statement in statements:
                    db.execute(statement)
                for sql, params in rows:
                    db.execute(sql, params)
            db.close()
            return
        import psycopg

        with psycopg.connect(target, autocommit=True) as pg:
            for statement in statements:
                pg.execute(statement)
            for sql, params in rows:
                pg.execute(sql.replace("?", "%s"), params)

    return make


def set_version(target: str, dialect: Dialect, schema: Schema, version: int) -> None:
    """Write ``version`` into the versions table, as a newer release would have."""
    sql = f"UPDATE {VERSIONS_TABLE} SET version = ? WHERE store = ?"
    if dialect == "sqlite":
        with sqlite3.connect(target) as db:
            db.execute(sql, (version, schema.store))
        db.close()
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as pg:
        pg.execute(sql.replace("?", "%s"), (version, schema.store))


def version_in(target: str, dialect: Dialect, schema: Schema) -> int:
    sql = f"SELECT version FROM {VERSIONS_TABLE} WHERE store = ?"
    if dialect == "sqlite":
        with sqlite3.connect(target) as db:
            row = db.execute(sql, (schema.store,)).fetchone()
        db.close()
        return int(row[0])
    import psycopg

    with psycopg.connect(target, autocommit=True) as pg:
        found = pg.execute(sql.replace("?", "%s"), (schema.store,)).fetchone()
    assert found is not None
    return int(found[0])


def assert_refused(opening: Callable[[], object], target: str, schema: Schema) -> None:
    """Opening a database one version ahead of ``schema`` is one line with db and versions."""
    with pytest.raises(ConfigError) as refused:
        opening()
    message = str(refused.value)
    assert "\n" not in message
    assert f"db {target!r}: the {schema.store} schema is at version {schema.version + 1}, " in (
        message
    )
    assert f"newer than this release's {schema.version};" in message


class TestRunnerOnPostgres(RunnerContract):
    """Given a fresh PostgreSQL schema."""

    @pytest.fixture
    def dialect(self) -> Dialect:
        return "postgresql"

    @pytest.fixture
    def target(self, postgres_url: str) -> str:
        return postgres_url


# -- tracker -----------------------------------------------------------------------------


def folded_move() -> MoveState:
    state: MoveState | None = None
    for event in move_story(node_id="n1", start=START, ids=sequential_ids()):
        state = apply(state, event)
    assert state is not None
    return state


def move_row(move: MoveState) -> tuple[str, tuple[Any, ...]]:
    started = move.started_at.isoformat() if move.started_at else None
    return (
        "INSERT INTO tracker_moves (source, move_id, started_at, state) VALUES (?, ?, ?, ?)",
        (move.source, str(move.move_id), started, move.model_dump_json()),
    )


class TestTracker:
    """Given a tracker database of an older release."""

    def test_release_n_1_keeps_moves_checkpoint_and_rejected(
        self, legacy: Legacy, target: str, dialect: Dialect
    ) -> None:
        move = folded_move()
        legacy(
            TRACKER_RELEASE_N_1,
            [
                move_row(move),
                ("INSERT INTO tracker_checkpoint (name, log_offset) VALUES ('log', ?)", (41,)),
                ("INSERT INTO tracker_rejected VALUES (?, ?, ?)", (7, "x.y", "not an event")),
            ],
        )
        store = open_store(target)
        assert store.load((move.source, move.move_id)) == move
        assert store.checkpoint() == 41
        assert store.rejected() == [Rejected(7, "x.y", "not an event")]
        store.close()
        assert version_in(target, dialect, TRACKER_SCHEMA) == TRACKER_SCHEMA.version

    def test_a_release_without_rejected_entries_gets_their_table(
        self, legacy: Legacy, target: str
    ) -> None:
        move = folded_move()
        legacy(TRACKER_BEFORE_REJECTED, [move_row(move)])
        store = open_store(target)
        store.save([move], offset=3, rejected=[Rejected(2, "k", "why")])
        assert (store.all_moves(), store.rejected()) == ([move], [Rejected(2, "k", "why")])
        store.close()

    def test_a_newer_schema_is_refused(self, target: str, dialect: Dialect) -> None:
        open_store(target).close()
        set_version(target, dialect, TRACKER_SCHEMA, TRACKER_SCHEMA.version + 1)
        assert_refused(lambda: open_store(target), target, TRACKER_SCHEMA)


# -- audit -------------------------------------------------------------------------------


def chained(count: int) -> list[AuditRecord]:
    records, prev = [], GENESIS
    story = move_story(node_id="n1", start=START, ids=sequential_ids())
    for seq, event in enumerate(story[:count], start=1):
        records.append(next_record(seq, prev, event))
        prev = records[-1].hash
    return records


def audit_row(record: AuditRecord) -> tuple[str, tuple[Any, ...]]:
    values = dataclasses.asdict(record)
    values["event"] = json.dumps(record.event, sort_keys=True)
    marks = ", ".join("?" * len(values))
    return f"INSERT INTO audit_records ({', '.join(values)}) VALUES ({marks})", tuple(
        values.values()
    )


class TestAudit:
    """Given an audit database of the release before versions."""

    def test_release_n_1_keeps_its_chain_and_spool_and_extends_the_chain(
        self, legacy: Legacy, target: str, dialect: Dialect
    ) -> None:
        records = chained(4)
        spooled = (
            "INSERT INTO audit_spool (id, kind, created_at, frame) VALUES (?, ?, ?, ?)",
            ("m1", "move", START.isoformat(), "<14>1 frame"),
        )
        legacy(AUDIT_RELEASE_N_1, [*map(audit_row, records[:3]), spooled])
        store = AuditStore.open(target)
        assert list(store.records()) == records[:3]
        assert store.pending() == [("m1", b"<14>1 frame")]
        # the next event is chained onto the last record of the older release
        story = move_story(node_id="n1", start=START, ids=sequential_ids())
        assert store.append([story[3]]) == [records[3]]
        store.close()
        assert version_in(target, dialect, AUDIT_SCHEMA) == AUDIT_SCHEMA.version

    def test_a_newer_schema_is_refused(self, target: str, dialect: Dialect) -> None:
        AuditStore.open(target).close()
        set_version(target, dialect, AUDIT_SCHEMA, AUDIT_SCHEMA.version + 1)
        assert_refused(lambda: AuditStore.open(target), target, AUDIT_SCHEMA)


# -- retrier -----------------------------------------------------------------------------


def retry_item(number: int, state: str = "scheduled") -> RetryItem:
    """A decision to resend one instance of move ``number``."""
    command = ev.ResendSubOperations.model_validate(
        {
            "id": UUID(int=0xD0 + number),
            "source": "dimsebus://retrier/r1",
            "time": START,
            "subject": str(UUID(int=number)),
            "data": ev.ResendData(
                operation=ev.Operation(kind="move", id=UUID(int=number)),
                node_id="n1",
                sop_instance_uids=(f"1.2.3.{number}",),
                destination_ae_title="STORESCP",
                move_originator=None,
                attempt=2,
            ),
        }
    )
    return RetryItem(
        id=command.id,
        state=state,  # type: ignore[arg-type]
        published=False,
        failed_attempt=1,
        status=0xA700,
        reason="out of resources",
        retry_at=START + dt.timedelta(seconds=number),
        step_ms=1000,
        decided_at=START + dt.timedelta(milliseconds=number),
        command=command,
    )


def retry_row(item: RetryItem) -> tuple[str, tuple[Any, ...]]:
    """The row the release before versions wrote for ``item`` (published)."""
    data = item.data
    return (
        "INSERT INTO retries VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            item.retry_at.isoformat() if item.retry_at else None,
            item.step_ms,
            item.decided_at.isoformat(),
            item.command.model_dump_json(),
        ),
    )


class TestRetrier:
    """Given a retrier database of the release before versions."""

    def test_release_n_1_keeps_its_decisions(
        self, legacy: Legacy, target: str, dialect: Dialect
    ) -> None:
        parked = retry_item(2, "parked")
        legacy(RETRIER_RELEASE_N_1, [retry_row(retry_item(1)), retry_row(parked)])
        store = RetryStore(target)
        assert store.items() == [
            dataclasses.replace(retry_item(1), published=True),
            dataclasses.replace(parked, published=True),
        ]
        store.close()
        assert version_in(target, dialect, RETRIER_SCHEMA) == RETRIER_SCHEMA.version

    def test_a_newer_schema_is_refused(self, target: str, dialect: Dialect) -> None:
        RetryStore(target).close()
        set_version(target, dialect, RETRIER_SCHEMA, RETRIER_SCHEMA.version + 1)
        assert_refused(lambda: RetryStore(target), target, RETRIER_SCHEMA)


@pytest.fixture
def retry_store(target: str) -> Iterator[RetryStore]:
    store = RetryStore(target)
    yield store
    store.close()


class TestRetryStore:
    """Given a retrier store, on SQLite and on PostgreSQL."""

    def test_a_decision_is_recorded_once(self, retry_store: RetryStore) -> None:
        first = retry_store.add(retry_item(1))
        again = retry_store.add(dataclasses.replace(retry_item(1), reason="another"))
        assert first == again == retry_item(1)
        assert retry_store.get(UUID(int=0xD0 + 9)) is None

    def test_published_and_state_change_in_place(self, retry_store: RetryStore) -> None:
        item = retry_store.add(retry_item(1))
        retry_store.mark_published(item.id)
        retry_store.set_state(item.id, "requeued")
        assert retry_store.get(item.id) == dataclasses.replace(
            item, published=True, state="requeued"
        )
        assert retry_store.items() == []
        assert retry_store.items(("requeued",)) == [retry_store.get(item.id)]

    def test_items_come_oldest_first_and_are_found_by_prefix(self, retry_store: RetryStore) -> None:
        for number in (3, 1, 2):
            retry_store.add(retry_item(number))
        assert [i.id.int - 0xD0 for i in retry_store.items()] == [1, 2, 3]
        prefix = str(retry_item(2).id)[:-1]
        assert [i.id for i in retry_store.find(prefix.upper())] == [
            retry_item(n).id for n in (1, 2, 3)
        ]
        assert retry_store.find(str(retry_item(2).id)) == [retry_item(2)]
        assert retry_store.find("%") == retry_store.find("_") == []

    def test_delete_forgets_the_states_named_and_counts_them(self, retry_store: RetryStore) -> None:
        retry_store.add(retry_item(1))
        retry_store.add(retry_item(2, "parked"))
        retry_store.add(retry_item(3, "parked"))
        assert retry_store.delete(("parked",)) == 2
        assert [i.id for i in retry_store.items()] == [retry_item(1).id]
