"""The node's archive: a folder of DICOM files and an SQLite index over them.

What it takes is decided by ``dimsebus.services.node.admission`` (valid UIDs, no silent
overwrite of another patient's instance), where files go by ``dimsebus.services.node.files``.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dimsebus.services.errors import ConfigError
from dimsebus.services.migrations import Migration, Schema
from dimsebus.services.node import admission
from dimsebus.services.node.admission import ArchiveError, Refused
from dimsebus.services.node.files import ArchiveFiles, identifiers
from dimsebus.services.node.query import ATTRIBUTES, LEVELS, UNIQUE_KEYS, Query
from dimsebus.services.sql import migrate_sqlite, unusable

__all__ = ["Archive", "ArchiveError", "Refused", "StoredInstance"]

# Migration 1 is the index every release before versions made, written out: a column
# added to ``query.ATTRIBUTES`` needs a migration of its own (ALTER TABLE ... ADD COLUMN).
_INDEX = """
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
SCHEMA = Schema("archive", (Migration(1, "instances, send jobs, commands", _INDEX),))


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An archived instance: what a retrieve needs to send it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    study_instance_uid: str | None = None
    patient_id: str | None = None

    def read(self) -> Dataset:
        """The instance as stored, with its file meta."""
        return dcmread(self.path)


def _unusable(root: Path, exc: BaseException) -> str:
    if root.exists() and not root.is_dir():
        return "is a file, not a folder"
    if isinstance(exc, OSError):
        return f"cannot be used as the archive folder ({exc.strerror or exc})"
    return f"its index {str(root / 'index.sqlite')!r} {unusable(root / 'index.sqlite', exc)}"


class Archive:
    """Files under ``root``/files, indexed in ``root``/index.sqlite; safe across threads."""

    def __init__(self, root: Path) -> None:
        """Open (or create) the archive; a ``ConfigError`` names a ``root`` that cannot hold one."""
        self.root = root
        index = root / "index.sqlite"
        db: sqlite3.Connection | None = None
        try:
            self.files = ArchiveFiles(root / "files")
            if index.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(index))
            db = self._db = sqlite3.connect(index, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            migrate_sqlite(self._db, SCHEMA, f"archive_path {str(root)!r}: index {str(index)!r}")
        except (OSError, sqlite3.Error, ConfigError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"archive_path {str(root)!r}: {_unusable(root, exc)}") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the index."""
        self._db.close()

    def store(
        self,
        dataset: Dataset,
        *,
        affected: tuple[str, str] | None = None,
        overwrite: bool = False,
    ) -> StoredInstance:
        """Write ``dataset`` (with file meta) as ``files/<study>/<instance>.dcm`` and index it.

        Raises ``Refused`` (``dimsebus.services.node.admission``) before anything is written
        when an identifying UID is not a valid UID or not the request's ``affected``
        SOP Class and Instance UID, when the instance is held under another Patient ID
        (unless ``overwrite``), or when the write fails. A replaced instance's old file
        is overwritten or removed, never left behind.
        """
        uids = identifiers(dataset)
        refusal = admission.identity_refusal(uids, affected)
        if refusal is not None:
            raise Refused(refusal)
        path = self.files.path_of(str(uids["StudyInstanceUID"]), str(uids["SOPInstanceUID"]))
        row = _columns(dataset, path)
        staged = self.files.stage(dataset, path)
        try:
            previous = self._commit(row, staged, path, overwrite)
        finally:
            staged.unlink(missing_ok=True)  # gone once it replaced ``path``
        if previous is not None and previous != path:
            self.files.discard(previous)
        return _instance(tuple(row[column] or "" for column in _INSTANCE_COLUMNS.split(", ")))

    def import_file(self, source: Path, *, overwrite: bool = False) -> StoredInstance:
        """Copy a DICOM file into the archive as ``store`` does, or raise ``ArchiveError``.

        The error is one line naming the file and why it was skipped.
        """
        try:
            dataset = dcmread(source)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise ArchiveError(f"{source}: not a readable DICOM file ({exc})") from exc
        try:
            return self.store(dataset, overwrite=overwrite)
        except Refused as exc:
            raise ArchiveError(f"{source}: {exc.refusal.comment}") from exc
        except Exception as exc:  # an operator gets a line per file, never a traceback
            raise ArchiveError(f"{source}: cannot store ({type(exc).__name__}: {exc})") from exc

    def _commit(
        self, row: dict[str, str | None], staged: Path, path: Path, overwrite: bool
    ) -> Path | None:
        """Index the instance and move its staged file into place, in one transaction.

        Returns the path of the file it replaced, if any.
        """
        with self._lock, self._db:
            held = self._db.execute(
                "SELECT patient_id, path FROM instances WHERE sop_instance_uid = ?",
                (row["sop_instance_uid"],),
            ).fetchone()
            if held is not None:
                refusal = admission.overwrite_refusal(
                    held[0], row["patient_id"], overwrite_instances=overwrite
                )
                if refusal is not None:
                    raise Refused(refusal)
            self._db.execute(
                f"INSERT OR REPLACE INTO instances ({', '.join(row)}) "
                f"VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            self.files.place(staged, path)  # raising, it rolls the row back
        return Path(held[1]) if held is not None else None

    def find(self, query: Query) -> list[dict[str, str]]:
        """One identifier per distinct match at the query's level, with the asked keys."""
        depth = LEVELS.index(query.level)
        keys = [
            k
            for k in query.return_keys
            if k in ATTRIBUTES and LEVELS.index(ATTRIBUTES[k][1]) <= depth
        ]
        group = ATTRIBUTES[UNIQUE_KEYS[query.level]][0]
        # Bare columns in an SQLite GROUP BY come from one row of the group; every asked key
        # is at or above the query level, so it has one value per group anyway.
        columns = [ATTRIBUTES[k][0] for k in keys] or [group]
        sql = f"SELECT {', '.join(columns)} FROM instances WHERE {query.where} GROUP BY {group}"
        with self._lock:
            rows = self._db.execute(sql, query.params).fetchall()
        return [dict(zip(keys, (value or "" for value in row), strict=False)) for row in rows]

    def instances(self, query: Query) -> list[StoredInstance]:
        """Every archived instance under the query's matches, in a stable order."""
        sql = (
            f"SELECT {_INSTANCE_COLUMNS} FROM instances "
            f"WHERE {query.where} ORDER BY study_instance_uid, series_instance_uid, "
            "CAST(instance_number AS INTEGER), sop_instance_uid"
        )
        with self._lock:
            rows = self._db.execute(sql, query.params).fetchall()
        return [_instance(row) for row in rows]

    def by_uids(self, uids: list[str]) -> Iterator[StoredInstance]:
        """The archived instances among ``uids``."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM instances "
                f"WHERE sop_instance_uid IN ({', '.join('?' * len(uids))})",
                uids,
            ).fetchall()
        return (_instance(row) for row in rows)

    # -- what `dimsebus send` sent, so that a resend can send the same files ---------------

    def record_send(
        self, operation_id: str, target: tuple[str, str, int], files: list[tuple[str, Path]]
    ) -> None:
        """Remember a send job's peer and the file of each instance it sends."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO send_jobs VALUES (?, ?, ?, ?)", (operation_id, *target)
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO send_files VALUES (?, ?, ?)",
                [(operation_id, uid, str(path)) for uid, path in files],
            )

    def send_job(self, operation_id: str) -> tuple[tuple[str, str, int], dict[str, Path]] | None:
        """A send job's peer (AE, host, port) and its files by SOP instance UID."""
        with self._lock:
            target = self._db.execute(
                "SELECT ae_title, host, port FROM send_jobs WHERE operation_id = ?",
                (operation_id,),
            ).fetchone()
            files = self._db.execute(
                "SELECT sop_instance_uid, path FROM send_files WHERE operation_id = ?",
                (operation_id,),
            ).fetchall()
        if target is None:
            return None
        return (target[0], target[1], int(target[2])), {uid: Path(p) for uid, p in files}

    # -- commands the node has executed, so that a redelivered one is not run twice --------

    def claim_command(self, command_id: str) -> bool:
        """Record a command as started; False if it was already done."""
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT state FROM commands WHERE id = ?", (command_id,)
            ).fetchone()
            if row is not None and row[0] == "done":
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO commands (id, state) VALUES (?, 'started')", (command_id,)
            )
        return True

    def command_done(self, command_id: str) -> None:
        """A command's effects are in the outbox: a redelivery of it is skipped."""
        with self._lock, self._db:
            self._db.execute("UPDATE commands SET state = 'done' WHERE id = ?", (command_id,))

    def count(self) -> int:
        """How many instances the archive holds."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


_INSTANCE_COLUMNS = (
    "sop_class_uid, sop_instance_uid, transfer_syntax_uid, path, study_instance_uid, patient_id"
)


def _instance(row: tuple[str, ...]) -> StoredInstance:
    sop_class, sop_instance, syntax, path, study, patient = row
    return StoredInstance(sop_class, sop_instance, syntax, Path(path), study, patient)


def _columns(dataset: Dataset, path: Path) -> dict[str, str | None]:
    """The index row of ``dataset`` stored at ``path``."""
    values = {column: _text(dataset.get(keyword)) for keyword, (column, _) in ATTRIBUTES.items()}
    values["transfer_syntax_uid"] = str(dataset.file_meta.TransferSyntaxUID)
    values["path"] = str(path)
    return values


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
