"""One SQL database for the services' state: an SQLite file, or PostgreSQL by URL.

The two differ in their parameter placeholder and in how a transaction runs;
stores write ``?`` and call ``transaction()``, and run unchanged on both. Opening
either brings the store's schema to its version (``dimsebus.services.migrations``).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dimsebus.services.errors import ConfigError, DimsebusError
from dimsebus.services.migrations import VERSIONS_TABLE, Schema, migrate


class Fenced(DimsebusError):
    """This process is no longer the active copy of its service: another one took over."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The term of office a store's transactions must still hold (``leadership``)."""

    table: str
    name: str
    term: int

    def check(self, cursor: Any, placeholder: str) -> None:
        """Raise ``Fenced`` unless ``name``'s term is still ``term``; the row stays share-locked
        until the transaction ends, so a new term waits for it."""
        row = cursor.execute(
            f"SELECT term FROM {self.table} WHERE name = {placeholder} FOR SHARE", (self.name,)
        ).fetchone()
        if row is None or int(row[0]) != self.term:
            found = "none" if row is None else int(row[0])
            raise Fenced(
                f"{self.name}: term {self.term} is over (now {found}); another copy is active"
            )


class Rows(list[Any]):
    """A statement's rows, read while the connection was held."""

    def fetchone(self) -> Any:
        """The first row, or None."""
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        """Every row."""
        return list(self)


class Database(abc.ABC):
    """A DB-API connection, its placeholder, and transactions; safe to share across threads.

    One connection serves a whole service (its consumer thread, its HTTP handlers, its
    sender task), so each statement and each transaction holds it until done.
    """

    placeholder = "?"
    _db: Any
    # Set while this process is the active copy of a service on a shared database.
    fence: Fence | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def sql(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this database's style."""
        return text.replace("?", self.placeholder)

    def execute(self, text: str, params: tuple[Any, ...] | list[Any] = ()) -> Rows:
        """Run one statement outside a transaction (reads, and single writes)."""
        with self._lock:
            cursor = self._db.execute(self.sql(text), params)
            return Rows(cursor.fetchall() if cursor.description else [])

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor whose statements commit together, or not at all."""

    def close(self) -> None:
        """Release the connection."""
        with self._lock:
            self._db.close()


class SqliteDatabase(Database):
    """One SQLite file (WAL).

    ``rebuildable``: the file holds only what replaying the log rebuilds (the tracker's
    moves and their checkpoint, committed together), so a commit need not wait for the
    disk (``synchronous=NORMAL``): a crash of the process loses nothing, one of the
    machine may lose the last commits, each with its checkpoint, and those events are
    read again. Otherwise every commit is flushed to the disk (SQLite's ``FULL``).
    """

    def __init__(self, path: Path, schema: Schema, *, rebuildable: bool = False) -> None:
        super().__init__()
        self._db = connect_sqlite(path, schema, isolation_level=None)
        if rebuildable:
            self._db.execute("PRAGMA synchronous=NORMAL")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        # IMMEDIATE: a writer takes the file's lock first, so two writers cannot interleave.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


class PostgresDatabase(Database):
    """A PostgreSQL database, for services that share a database server."""

    placeholder = "%s"

    def __init__(self, url: str, schema: Schema) -> None:
        import psycopg

        super().__init__()
        self._db = psycopg.connect(url, autocommit=True)
        try:
            with self._db.transaction(), self._db.cursor() as cursor:
                migrate(cursor, "postgresql", schema, f"db {masked_url(url)!r}")
        except BaseException:
            self._db.close()
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock, self._db.transaction(), self._db.cursor() as cursor:
            if self.fence is not None:
                self.fence.check(cursor, self.placeholder)
            yield cursor


def connect_sqlite(
    path: Path, schema: Schema, isolation_level: Literal["DEFERRED"] | None = "DEFERRED"
) -> sqlite3.Connection:
    """A WAL connection to the SQLite file ``path`` with ``schema`` at its version (file and
    folder made if missing), shared across threads; a ``ConfigError`` naming the path and
    why when it cannot be one (a folder, not SQLite, not writable, a newer schema)."""
    db: sqlite3.Connection | None = None
    try:
        make_room_for(path)
        db = sqlite3.connect(
            path, isolation_level=isolation_level, check_same_thread=False, timeout=30.0
        )
        db.execute("PRAGMA journal_mode=WAL")
        migrate_sqlite(db, schema, f"db {str(path)!r}")
        return db
    except (OSError, sqlite3.Error) as exc:
        if db is not None:
            db.close()
        raise ConfigError(f"db {str(path)!r}: {unusable(path, exc)}") from exc
    except ConfigError:
        if db is not None:
            db.close()
        raise


def migrate_sqlite(db: sqlite3.Connection, schema: Schema, where: str) -> int:
    """Bring ``schema`` in the SQLite ``db`` to its version, in one transaction; the version
    found. ``where`` names the database in a refusal (see ``migrations.migrate``)."""
    if _recorded_version(db, schema.store) == schema.version:
        return schema.version  # nothing to write: no wait for a busy service's write lock
    # IMMEDIATE: a second process opening the file waits here, then finds it migrated.
    db.execute("BEGIN IMMEDIATE")
    try:
        found = migrate(db, "sqlite", schema, where)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def _recorded_version(db: sqlite3.Connection, store: str) -> int | None:
    has_table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    if db.execute(has_table, (VERSIONS_TABLE,)).fetchone() is None:
        return None
    query = f"SELECT version FROM {VERSIONS_TABLE} WHERE store = ?"
    row = db.execute(query, (store,)).fetchone()
    return int(row[0]) if row else None


def make_room_for(path: Path) -> None:
    """Make the folder of the SQLite file ``path``; an OSError when ``path`` is a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))


def unusable(path: Path, exc: BaseException) -> str:
    """Why an SQLite file cannot be opened at ``path``, in a few words (``exc`` as a last word)."""
    if path.is_dir():
        return "is a directory, not an SQLite file"
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        return "is not an SQLite file"
    if isinstance(exc, OSError):
        return f"cannot be created ({exc.strerror or exc})"
    if not path.exists():
        try:  # SQLite says only "unable to open database file": ask the OS why
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as denied:
            return f"cannot be created ({denied.strerror or denied})"
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {str(folder)!r} is not writable"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "is not readable and writable by this user"
    return f"cannot be opened as an SQLite file ({exc})"


def is_postgresql(db: str) -> bool:
    """Whether ``db`` is a PostgreSQL URL (else an SQLite file path)."""
    return db.startswith(("postgresql://", "postgres://"))


def open_database(db: str, schema: Schema, *, rebuildable: bool = False) -> Database:
    """``postgresql://...`` opens PostgreSQL; anything else is an SQLite file path.

    Either way ``schema`` is brought to its version before the database is returned.
    ``rebuildable``: see ``SqliteDatabase`` (PostgreSQL commits as its server is set).
    """
    if is_postgresql(db):
        try:
            return PostgresDatabase(db, schema)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"--db: cannot open {masked_url(db)!r}: {exc}") from exc
    return SqliteDatabase(Path(db), schema, rebuildable=rebuildable)


def masked_url(url: str) -> str:
    """``url`` without its password, to name a database in a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
