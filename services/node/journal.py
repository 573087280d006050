"""Which C-MOVEs the node is serving, kept in the outbox file so that a crash leaves a trace.

A C-MOVE is opened here (its C-MOVE-RQ's fact, or event, and matched instances)
when it starts. The outbox then notes, in the same transaction as each response event,
which of its instances got an answer, and closes the move when its
``dicom.move.completed`` (or ``dicom.move.interrupted``) is spooled
(``dimsebus.services.bus.outbox``, ``Outbox._journal``): no triggers.
A move still open when the node starts again was cut off by a crash: see
``dimsebus.services.node.recovery``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dimsebus.schemas import events as ev
from dimsebus.services.bus.outbox import OPEN_MOVE, migrate_outbox
from dimsebus.services.node import fact_events, facts
from dimsebus.services.node.facts import FORMAT


@dataclass(frozen=True, slots=True)
class OpenMove:
    """A C-MOVE without its final response: what it matched, and what got an answer."""

    requested: ev.MoveRequested
    matched: tuple[str, ...]
    answered: frozenset[str]

    @property
    def unanswered(self) -> list[str]:
        """Matched instances without a response event, in the order they were matched."""
        return [uid for uid in self.matched if uid not in self.answered]


class MoveJournal:
    """The open C-MOVEs of one node, in its outbox file (which writes what they got)."""

    def __init__(self, outbox_path: Path) -> None:
        self._db = sqlite3.connect(outbox_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrate_outbox(self._db, outbox_path)
        self._lock = threading.Lock()

    def opened(self, requested: ev.MoveRequested, matched: Sequence[str]) -> None:
        """Note a C-MOVE that starts, on its own (the node spools its event with it:
        ``Outbox.append_opening``)."""
        row = (
            str(requested.data.operation.id),
            requested.model_dump_json().encode(),
            json.dumps(list(matched)),
        )
        with self._lock:
            self._db.execute(OPEN_MOVE, row)

    def open_moves(self) -> list[OpenMove]:
        """The C-MOVEs noted and not closed: after a restart, those the crash cut off."""
        with self._lock:
            rows = self._db.execute(
                "SELECT operation_id, requested, matched FROM move_journal"
            ).fetchall()
            answered = {
                operation: frozenset(
                    uid
                    for (uid,) in self._db.execute(
                        "SELECT sop_instance_uid FROM move_answered WHERE operation_id = ?",
                        (operation,),
                    )
                )
                for operation, _, _ in rows
            }
        return [
            OpenMove(_requested(requested), tuple(json.loads(matched)), answered[operation])
            for operation, requested, matched in rows
        ]

    def close(self) -> None:
        """Close the connection; the journal stays in the file."""
        with self._lock:
            self._db.close()


def _requested(body: bytes) -> ev.MoveRequested:
    """The C-MOVE-RQ's event of a journal entry: kept as its fact, or (before) as its JSON."""
    if bytes(body).startswith(b"["):
        event = fact_events.event_of(facts.decode(FORMAT, bytes(body)))
        if not isinstance(event, ev.MoveRequested):
            raise ValueError(f"a journalled C-MOVE-RQ made {event.type}, not its requested event")
        return event
    return ev.MoveRequested.model_validate_json(body)
