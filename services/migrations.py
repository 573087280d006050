"""Versioned schemas for the stores: numbered migrations, applied in one transaction at open.

Each store lists its migrations, 1, 2, 3 ... in order. The table ``dimsebus_schema_versions``
holds, per store, the number of the last one applied; on SQLite and PostgreSQL alike,
so stores that share one database (a PostgreSQL server, say) each keep their own.
Opening a store applies the migrations it has not seen, and records the new version,
in the transaction the caller holds: a failing step leaves the database as it was.

A database from before versions were kept has no row: it is at version 0, unless the
store's ``unversioned`` tells how far it had come. Migration 1 of every store is the
schema those releases made (``CREATE ... IF NOT EXISTS``), so applying it to one of
their databases adds only what it lacked. A version above the store's last one was
written by a newer release: opening it is refused, not guessed at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dimsebus.services.clock import utc_now
from dimsebus.services.errors import ConfigError

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]

VERSIONS_TABLE = "dimsebus_schema_versions"  # one name that no other application uses
# Any constant will do: it only keeps two processes from migrating one PostgreSQL at once.
_PG_LOCK_KEY = 0x64696D7365627573  # "dimsebus"

_CREATE_VERSIONS = f"""
CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
    store TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    migrated_at TEXT NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step: SQL for both dialects, or PostgreSQL's own where it differs.

    Statements are separated by ``;`` (so none may hold one inside).
    """

    version: int
    name: str
    sql: str
    postgresql: str | None = None

    def statements(self, dialect: Dialect) -> list[str]:
        """The step's statements in ``dialect``."""
        text = self.postgresql if dialect == "postgresql" and self.postgresql else self.sql
        return [statement.strip() for statement in text.split(";") if statement.strip()]


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's migrations in order; its version is the number of the last one."""

    store: str
    migrations: tuple[Migration, ...]
    # How far an unversioned database (a release before versions) had come; 0 if unset.
    unversioned: Callable[[Any, Dialect], int] | None = None

    def __post_init__(self) -> None:
        numbers = [migration.version for migration in self.migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"schema {self.store!r}: migrations are numbered {numbers}, not 1..n")

    @property
    def version(self) -> int:
        """The version this code writes and reads."""
        return len(self.migrations)


def migrate(cursor: Any, dialect: Dialect, schema: Schema, where: str) -> int:
    """Bring ``schema`` to its version inside the caller's transaction; the version found.

    ``where`` names the database in the one-line ``ConfigError`` that refuses a schema
    newer than this code (a downgrade).
    """
    mark = "%s" if dialect == "postgresql" else "?"
    if dialect == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
    cursor.execute(_CREATE_VERSIONS)
    row = cursor.execute(
        f"SELECT version FROM {VERSIONS_TABLE} WHERE store = {mark}", (schema.store,)
    ).fetchone()
    if row is not None:
        found = int(row[0])
    else:
        found = schema.unversioned(cursor, dialect) if schema.unversioned else 0
    if found > schema.version:
        raise ConfigError(
            f"{where}: the {schema.store} schema is at version {found}, newer than this "
            f"release's {schema.version}; refusing to open it (use the release that wrote it)"
        )
    for migration in schema.migrations[found:]:
        for statement in migration.statements(dialect):
            cursor.execute(statement)
    if row is None or found < schema.version:
        cursor.execute(
            f"INSERT INTO {VERSIONS_TABLE} (store, version, migrated_at) "
            f"VALUES ({mark}, {mark}, {mark}) ON CONFLICT (store) DO UPDATE "
            "SET version = excluded.version, migrated_at = excluded.migrated_at",
            (schema.store, schema.version, utc_now().isoformat()),
        )
    if found < schema.version:
        # From 0 is a new file (or one of the release before versions): no news at start.
        level = logging.INFO if found else logging.DEBUG
        log.log(
            level, "%s: %s schema from version %d to %d", where, schema.store, found, schema.version
        )
    return found
