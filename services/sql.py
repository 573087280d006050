"""One SQL database for the services' state: an SQLite file, or PostgreSQL by URL.

The two differ in their parameter placeholder and in how a transaction runs;
stores write ``?`` and call ``transaction()``, and run unchanged on both.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.errors import ConfigError


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
    """One SQLite file (WAL)."""

    def __init__(self, path: Path, schema: str) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(schema)

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

    def __init__(self, url: str, schema: str) -> None:
        import psycopg

        super().__init__()
        self._db = psycopg.connect(url, autocommit=True)
        for statement in schema.split(";"):
            if statement.strip():
                self._db.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock, self._db.transaction(), self._db.cursor() as cursor:
            yield cursor


def open_database(db: str, schema: str) -> Database:
    """``postgresql://...`` opens PostgreSQL; anything else is an SQLite file path."""
    if db.startswith(("postgresql://", "postgres://")):
        try:
            return PostgresDatabase(db, schema)
        except Exception as exc:
            raise ConfigError(f"--db: cannot open {db!r}: {exc}") from exc
    return SqliteDatabase(Path(db), schema)
