"""The migration runner: numbered steps applied once, in one transaction, never a downgrade.

``RunnerContract`` runs on every dialect: here on SQLite, and on PostgreSQL in
tests/integration/test_store_migrations.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dimsebus.services.errors import ConfigError
from dimsebus.services.migrations import VERSIONS_TABLE, Dialect, Migration, Schema
from dimsebus.services.node.archive import SCHEMA as ARCHIVE_SCHEMA
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.query import ATTRIBUTES
from dimsebus.services.sql import Database, migrate_sqlite, open_database

V1 = Migration(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
V2 = Migration(
    2,
    "notes get an author",
    "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'nobody';"
    "CREATE INDEX notes_by_author ON notes (author)",
)
V3 = Migration(
    3,
    "tags, one per note",
    "CREATE TABLE tags (note_id INTEGER PRIMARY KEY, tag TEXT NOT NULL);"
    "INSERT INTO tags (note_id, tag) SELECT id, 'untagged' FROM notes",
)
BROKEN = Migration(2, "half a step", "CREATE TABLE halfway (x TEXT); CREATE TABLE nonsense (")


def schema(*migrations: Migration, store: str = "notes") -> Schema:
    return Schema(store, migrations)


Opener = Callable[[Schema], Database]


def version_of(db: Database, store: str = "notes") -> int | None:
    row = db.execute(f"SELECT version FROM {VERSIONS_TABLE} WHERE store = ?", (store,)).fetchone()
    return int(row[0]) if row else None


def has_table(db: Database, table: str) -> bool:
    try:
        db.execute(f"SELECT COUNT(*) FROM {table}")
    except Exception:
        return False
    return True


class RunnerContract:
    """Given a database of one dialect: ``dialect``, ``target`` (its path or URL)."""

    @pytest.fixture
    def opener(self, target: str) -> Iterator[Opener]:
        opened: list[Database] = []

        def open_it(schema: Schema) -> Database:
            opened.append(open_database(target, schema))
            return opened[-1]

        yield open_it
        for db in opened:
            db.close()

    def test_a_new_database_gets_every_step_and_the_version(self, opener: Opener) -> None:
        db = opener(schema(V1, V2, V3))
        assert version_of(db) == 3
        db.execute("INSERT INTO notes (id, body) VALUES (1, 'hello')")
        assert db.execute("SELECT author FROM notes").fetchall() == [("nobody",)]

    def test_opening_again_changes_nothing(self, opener: Opener) -> None:
        opener(schema(V1, V2)).execute("INSERT INTO notes (id, body) VALUES (1, 'kept')")
        again = opener(schema(V1, V2))
        assert version_of(again) == 2
        assert again.execute("SELECT body FROM notes").fetchall() == [("kept",)]

    def test_an_older_database_gets_only_the_steps_it_lacks_and_keeps_its_rows(
        self, opener: Opener
    ) -> None:
        # given a database at version 1 with rows
        old = opener(schema(V1))
        old.execute("INSERT INTO notes (id, body) VALUES (1, 'a'), (2, 'b')")
        old.close()
        # when it is opened by code that knows three steps
        db = opener(schema(V1, V2, V3))
        # then steps 2 and 3 ran over the rows, and it is at version 3
        assert version_of(db) == 3
        rows = db.execute("SELECT id, body, author FROM notes ORDER BY id").fetchall()
        assert [tuple(row) for row in rows] == [(1, "a", "nobody"), (2, "b", "nobody")]
        tags = db.execute("SELECT note_id, tag FROM tags ORDER BY note_id").fetchall()
        assert [tuple(row) for row in tags] == [(1, "untagged"), (2, "untagged")]

    def test_a_failing_step_leaves_the_database_as_it_was(self, opener: Opener) -> None:
        opener(schema(V1)).execute("INSERT INTO notes (id, body) VALUES (1, 'a')")
        with pytest.raises(ConfigError):
            opener(schema(V1, BROKEN))
        db = opener(schema(V1))
        assert version_of(db) == 1
        assert not has_table(db, "halfway")
        assert db.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 1

    def test_a_newer_schema_is_refused_in_one_line_naming_db_and_both_versions(
        self, opener: Opener, target: str
    ) -> None:
        opener(schema(V1, V2, V3)).execute("INSERT INTO notes (id, body) VALUES (1, 'a')")
        with pytest.raises(ConfigError) as refused:
            opener(schema(V1, V2))
        message = str(refused.value)
        assert "\n" not in message
        assert "version 3" in message
        assert "release's 2" in message
        assert target.split("?")[0] in message
        # and the database is untouched: the release that wrote it still opens it
        assert version_of(opener(schema(V1, V2, V3))) == 3

    def test_each_dialect_runs_its_own_variant(self, opener: Opener, dialect: Dialect) -> None:
        variant = Migration(
            1,
            "differs",
            "CREATE TABLE made_by_sqlite (x TEXT)",
            "CREATE TABLE made_by_postgresql (x TEXT)",
        )
        db = opener(schema(variant))
        assert has_table(db, f"made_by_{dialect}")
        other = "postgresql" if dialect == "sqlite" else "sqlite"
        assert not has_table(db, f"made_by_{other}")

    def test_stores_sharing_a_database_keep_their_own_versions(self, opener: Opener) -> None:
        tags = Migration(1, "tags", "CREATE TABLE labels (name TEXT PRIMARY KEY)")
        opener(schema(V1, V2))
        db = opener(schema(tags, store="labels"))
        assert (version_of(db, "notes"), version_of(db, "labels")) == (2, 1)

    def test_processes_opening_a_new_database_at_once_all_succeed(self, opener: Opener) -> None:
        with ThreadPoolExecutor(4) as pool:
            opened = list(pool.map(lambda _: opener(schema(V1, V2, V3)), range(4)))
        assert {version_of(db) for db in opened} == {3}


class TestRunnerOnSqlite(RunnerContract):
    """Given an SQLite file."""

    @pytest.fixture
    def dialect(self) -> Dialect:
        return "sqlite"

    @pytest.fixture
    def target(self, tmp_path: Path) -> str:
        return str(tmp_path / "state.sqlite")


def test_a_current_sqlite_file_opens_while_a_writer_holds_it(tmp_path: Path) -> None:
    # given a database at the current version, and a service in a write transaction on it
    path = tmp_path / "busy.sqlite"
    open_database(str(path), schema(V1)).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    # when a command opens it
    started = time.monotonic()
    db = open_database(str(path), schema(V1))
    # then it did not wait for the writer's lock (it needs none: nothing to migrate)
    assert time.monotonic() - started < 5.0
    assert version_of(db) == 1
    db.close()
    writer.execute("ROLLBACK")
    writer.close()


class TestSchema:
    """Given a store's list of migrations."""

    def test_the_version_is_the_last_step(self) -> None:
        assert schema(V1, V2, V3).version == 3
        assert schema().version == 0

    @pytest.mark.parametrize("steps", [(V2,), (V1, V3), (V2, V1), (V1, V1)])
    def test_steps_out_of_order_or_missing_are_a_mistake(
        self, steps: tuple[Migration, ...]
    ) -> None:
        with pytest.raises(ValueError, match="numbered"):
            schema(*steps)

    def test_statements_are_split_on_semicolons(self) -> None:
        assert V2.statements("sqlite") == [
            "ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT 'nobody'",
            "CREATE INDEX notes_by_author ON notes (author)",
        ]


# A store of a release before versions, with an unversioned ALTER (as the outbox's was):
# which columns its table has tells how far it had come.
LEGACY_V1 = Migration(1, "queue", "CREATE TABLE IF NOT EXISTS queue (id INTEGER PRIMARY KEY)")
LEGACY_V2 = Migration(2, "sent_at", "ALTER TABLE queue ADD COLUMN sent_at TEXT")


def legacy_version(cursor: Any, dialect: Dialect) -> int:
    columns = {row[1] for row in cursor.execute("PRAGMA table_info(queue)").fetchall()}
    return 0 if not columns else 2 if "sent_at" in columns else 1


LEGACY = Schema("queue", (LEGACY_V1, LEGACY_V2), unversioned=legacy_version)


class TestUnversioned:
    """Given a database made before versions were kept."""

    @pytest.mark.parametrize("altered", [False, True])
    def test_its_hook_tells_how_far_it_came(self, tmp_path: Path, altered: bool) -> None:
        path = tmp_path / "legacy.sqlite"
        with sqlite3.connect(path) as old:
            old.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY)")
            if altered:
                old.execute("ALTER TABLE queue ADD COLUMN sent_at TEXT")
            old.execute("INSERT INTO queue (id) VALUES (7)")
        old.close()
        db = sqlite3.connect(path)
        assert migrate_sqlite(db, LEGACY, "db") == (2 if altered else 1)
        assert db.execute("SELECT id, sent_at FROM queue").fetchall() == [(7, None)]
        assert migrate_sqlite(db, LEGACY, "db") == 2
        db.close()

    def test_without_a_hook_it_starts_from_nothing(self, tmp_path: Path) -> None:
        db = sqlite3.connect(tmp_path / "new.sqlite")
        assert migrate_sqlite(db, schema(V1), "db") == 0
        assert migrate_sqlite(db, schema(V1), "db") == 1
        db.close()


# The archive index as the release before versions made it ("release N-1"), copied here
# (its columns were made from query.ATTRIBUTES then).
ARCHIVE_RELEASE_N_1 = """
CREATE TABLE IF NOT EXISTS instances (
    patient_id TEXT, patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_instance_uid TEXT, study_date TEXT, study_time TEXT, accession_number TEXT,
    study_id TEXT, study_description TEXT, series_instance_uid TEXT, modality TEXT,
    series_number TEXT, sop_instance_uid TEXT, sop_class_uid TEXT, instance_number TEXT,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS by_patient ON instances (patient_id);
CREATE INDEX IF NOT EXISTS by_study ON instances (study_instance_uid);
CREATE INDEX IF NOT EXISTS by_series ON instances (series_instance_uid);
CREATE TABLE IF NOT EXISTS send_jobs (
    operation_id TEXT PRIMARY KEY,
    ae_title TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS send_files (
    operation_id TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (operation_id, sop_instance_uid)
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""


class TestArchiveIndex:
    """Given the node's archive index."""

    def test_one_of_the_release_before_is_adopted_with_its_rows(self, tmp_path: Path) -> None:
        # given an index made by the release before versions, with a send job and a command
        with sqlite3.connect(tmp_path / "index.sqlite") as old:
            old.executescript(ARCHIVE_RELEASE_N_1)
            old.execute("INSERT INTO send_jobs VALUES ('op-1', 'STORESCP', '127.0.0.1', 11112)")
            old.execute("INSERT INTO send_files VALUES ('op-1', '1.2.3', '/files/a.dcm')")
            old.execute("INSERT INTO commands (id, state) VALUES ('c-1', 'done')")
        old.close()
        # when this release opens it
        archive = Archive(tmp_path)
        # then its rows are there, and it is at the current version
        assert archive.send_job("op-1") == (
            ("STORESCP", "127.0.0.1", 11112),
            {"1.2.3": Path("/files/a.dcm")},
        )
        assert archive.claim_command("c-1") is False
        archive.close()
        with sqlite3.connect(tmp_path / "index.sqlite") as db:
            found = db.execute(f"SELECT version FROM {VERSIONS_TABLE} WHERE store = 'archive'")
            assert found.fetchall() == [(ARCHIVE_SCHEMA.version,)]
        db.close()

    def test_every_queried_attribute_has_its_column(self, tmp_path: Path) -> None:
        Archive(tmp_path).close()
        with sqlite3.connect(tmp_path / "index.sqlite") as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
        db.close()
        assert {column for column, _ in ATTRIBUTES.values()} <= columns

    def test_a_newer_index_is_refused_in_one_line(self, tmp_path: Path) -> None:
        Archive(tmp_path).close()
        with sqlite3.connect(tmp_path / "index.sqlite") as db:
            db.execute(f"UPDATE {VERSIONS_TABLE} SET version = version + 1")
        db.close()
        with pytest.raises(ConfigError) as refused:
            Archive(tmp_path)
        message = str(refused.value)
        newer = ARCHIVE_SCHEMA.version + 1
        assert message == (
            f"archive_path {str(tmp_path)!r}: index {str(tmp_path / 'index.sqlite')!r}: "
            f"the archive schema is at version {newer}, newer than this release's "
            f"{ARCHIVE_SCHEMA.version}; refusing to open it (use the release that wrote it)"
        )
