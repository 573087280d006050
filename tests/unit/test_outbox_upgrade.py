"""An outbox written by an earlier dimsebus still drains, and keeps its move journal, after upgrade.

Until 2026-11-30 the move journal was kept by SQLite triggers on the outbox, and
C-STORE pairs were spooled as ``dicom.cstore.exchange/1`` records; then as
``dicom.cstore.pair/2``, every other event whole, until the node spooled facts only. Such a file
opened now loses its triggers (the outbox writes the journal itself), and every
row it holds, event or record, is made into its message by the relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.batch import Outgoing, PublishOutcome
from dimsebus.services.bus.outbox import SCHEMA as OUTBOX_SCHEMA
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.bus.publisher import Publisher
from dimsebus.services.bus.relay import OutboxRelay
from dimsebus.services.clock import new_id
from dimsebus.services.errors import ConfigError
from dimsebus.services.migrations import VERSIONS_TABLE
from dimsebus.services.node import fact_events, facts
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse
from dimsebus.services.node.fact_records import record_of
from dimsebus.services.node.journal import MoveJournal
from dimsebus.services.node.storepair import PAIR_FORMAT, Recorder

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=3)
REQUESTED = next(e for e in STORY if isinstance(e, ev.MoveRequested))
FIRST = next(e for e in STORY if isinstance(e, ev.CStoreResponseReceived))
MOVE = str(REQUESTED.data.operation.id)
MATCHED = [f"1.2.826.0.1.3680043.8.498.1.1.{n}" for n in range(1, 4)]

# The schema and a row exactly as the previous version wrote them.
EARLIER_SCHEMA = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,
    routing_key TEXT NOT NULL, correlation_id TEXT, time TEXT NOT NULL, body BLOB NOT NULL,
    subject TEXT, sent_at TEXT, format TEXT
);
CREATE TABLE relay_stats (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE UNIQUE INDEX outbox_event_id ON outbox (event_id) WHERE format IS NULL;
CREATE TABLE move_journal (
    operation_id TEXT PRIMARY KEY, requested BLOB NOT NULL, matched TEXT NOT NULL
);
CREATE TABLE move_answered (
    operation_id TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,
    PRIMARY KEY (operation_id, sop_instance_uid)
) WITHOUT ROWID;
CREATE TRIGGER move_journal_answered AFTER INSERT ON outbox
WHEN NEW.type IN ('dicom.cstore.response.received', 'dicom.cstore.response.missing')
    AND NEW.correlation_id IN (SELECT operation_id FROM move_journal)
BEGIN
    INSERT OR IGNORE INTO move_answered VALUES (NEW.correlation_id, NEW.subject);
END;
CREATE TRIGGER move_journal_closed AFTER INSERT ON outbox
WHEN NEW.type IN ('dicom.move.completed', 'dicom.move.interrupted')
BEGIN
    DELETE FROM move_answered WHERE operation_id = NEW.correlation_id;
    DELETE FROM move_journal WHERE operation_id = NEW.correlation_id;
END;
"""
EARLIER_RECORD = (
    b'[[{"id":"00000000-0000-0000-0000-000000000005","role":"requestor",'
    b'"local_ae_title":"DIMSEBUS","peer_ae_title":"STORESCP","peer_host":"127.0.0.1",'
    b'"peer_port":11112},{"kind":"move","id":"00000000-0000-0000-0000-000000000001"},'
    b'{"ae_title":"MOVESCU","message_id":1},{"site":"example"}],'
    b'[1,"1.2.840.10008.1.2.1",1,"1.2.840.10008.5.1.4.1.1.2",'
    b'"1.2.826.0.1.3680043.8.498.1.1.1",1,null,null,"2026-11-26T12:00:00.021000+00:00",'
    b'0,1,null,null,"00000000-0000-0000-0000-000000000007",'
    b'"2026-11-26T12:00:00.035000+00:00","dimsebus://node/n1"]]'
)
"""The ``dicom.cstore.exchange/1`` record of ``FIRST``, as the previous version spooled it."""


def earlier_outbox(path: Path) -> None:
    """An outbox file as the previous version left it: a move open, two rows spooled."""
    with sqlite3.connect(path) as db:
        db.executescript(EARLIER_SCHEMA)
        db.execute(
            "INSERT INTO move_journal VALUES (?, ?, ?)",
            (MOVE, REQUESTED.model_dump_json().encode(), '["' + '","'.join(MATCHED) + '"]'),
        )
        db.execute(
            "INSERT INTO outbox (event_id, type, routing_key, correlation_id, time, body, "
            "subject, format) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                str(REQUESTED.id),
                REQUESTED.type,
                REQUESTED.routing_key,
                MOVE,
                REQUESTED.time.isoformat(),
                REQUESTED.model_dump_json().encode(),
                REQUESTED.subject,
            ),
        )
        db.execute(
            "INSERT INTO outbox (event_id, type, routing_key, correlation_id, time, body, "
            "subject, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(FIRST.id),
                FIRST.type,
                FIRST.type,
                MOVE,
                FIRST.time.isoformat(),
                EARLIER_RECORD,
                FIRST.subject,
                "dicom.cstore.exchange/1",
            ),
        )
    db.close()


class Confirming:
    """A publisher whose broker confirms everything at once (what the relay is given)."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send_batch(self, messages: Sequence[Outgoing], exchange: str) -> list[PublishOutcome]:
        self.sent.extend(messages)
        return [0.001 for _ in messages]


def test_an_earlier_outbox_drains_its_events_and_records(tmp_path: Path) -> None:
    # given an outbox the previous version wrote: an event and an exchange/1 record
    path = tmp_path / "outbox.sqlite"
    earlier_outbox(path)
    # when the new version's relay drains it
    outbox = Outbox(path)
    relay = OutboxRelay(outbox, "amqp://unused/", name="test", formats=fact_events.FORMATS)
    publisher = Confirming()
    confirmed = asyncio.run(relay.drain_once(cast(Publisher, publisher)))
    # then both are published as the events they were, and the outbox is empty
    assert confirmed == 2
    assert outbox.depth() == 0
    assert [m.message_id for m in publisher.sent] == [str(REQUESTED.id), str(FIRST.id)]
    made = ev.parse_event(publisher.sent[1].body)
    # (a record's responded_at is its event's time, which the story sets apart)
    assert made == FIRST.model_copy(
        update={"data": FIRST.data.model_copy(update={"responded_at": FIRST.time})}
    )
    outbox.close()


def test_an_earlier_outbox_keeps_its_journal_without_triggers(tmp_path: Path) -> None:
    # given an outbox the previous version wrote, its move open, one instance answered
    path = tmp_path / "outbox.sqlite"
    earlier_outbox(path)
    # when the new version opens it
    outbox, journal = Outbox(path), MoveJournal(path)
    with sqlite3.connect(path) as db:
        triggers = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    db.close()
    # then its triggers are gone, and the journal still says what was answered
    assert triggers == []
    [open_move] = journal.open_moves()
    assert open_move.unanswered == MATCHED[1:]
    # and the outbox itself notes the next answer, and closes the move with its final event
    second = [e for e in STORY if isinstance(e, ev.CStoreResponseReceived)][1]
    outbox.append([second])
    assert journal.open_moves()[0].unanswered == MATCHED[2:]
    outbox.append([e for e in STORY if isinstance(e, ev.MoveCompleted)])
    assert journal.open_moves() == []
    journal.close()
    outbox.close()


def test_a_response_for_no_open_move_leaves_the_journal_alone(tmp_path: Path) -> None:
    # given a fresh outbox and journal with no move open
    outbox, journal = Outbox(tmp_path / "o.sqlite"), MoveJournal(tmp_path / "o.sqlite")
    # when a response event of the move is spooled all the same
    outbox.append([FIRST])
    # then it is spooled, and nothing is noted for a move the journal never opened
    journal.opened(REQUESTED, MATCHED)
    assert outbox.depth() == 1
    assert journal.open_moves()[0].unanswered == MATCHED
    journal.close()
    outbox.close()


def test_rows_the_version_before_facts_spooled_drain_beside_new_facts(tmp_path: Path) -> None:
    # given an outbox the version before facts wrote: an event spooled whole (format NULL,
    # its move open in the journal as the event's JSON) and a pair in dicom.cstore.pair/2
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    outbox.append_opening(REQUESTED, MATCHED)
    sent = SentStore(**{name: getattr(FIRST.data, name) for name in SentStore.__dataclass_fields__})
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": sent.message_id})
    tagged = Recorder().record(sent, response, Stamp(FIRST.id, FIRST.time, FIRST.source))
    untagged = b"[" + tagged.body.split(b",", 1)[1]  # the pair/2 body: no tag
    outbox.append_record(dataclasses.replace(tagged, format=PAIR_FORMAT, body=untagged))
    # when the new version spools facts into it: a missing response, then the move's end
    later = Stamp(new_id(), FIRST.time, FIRST.source)
    second = dataclasses.replace(sent, affected_sop_instance_uid=MATCHED[1], message_id=2)
    counts = ev.SubOperationCounts(remaining=0, completed=1, failed=1, warning=0)
    data = REQUESTED.data
    completed = facts.Completed(
        Stamp(new_id(), FIRST.time, FIRST.source),
        "move",
        data.association,
        data.operation,
        data.message_id,
        0xB000,
        {"move_destination": data.move_destination, "counts": counts},
    )
    journal = MoveJournal(path)
    outbox.append_record(record_of(facts.Missing(later, second, "aborted", "peer aborted")))
    assert journal.open_moves()[0].unanswered == MATCHED[2:]  # the pair/2 row and the fact
    outbox.append_records([record_of(completed)])
    assert journal.open_moves() == []
    # and its relay drains it
    relay = OutboxRelay(outbox, "amqp://unused/", name="test", formats=fact_events.FORMATS)
    publisher = Confirming()
    confirmed = asyncio.run(relay.drain_once(cast(Publisher, publisher)))
    # then every row went out, in order, as the event it was or its fact makes
    assert confirmed == 4
    assert outbox.depth() == 0
    made = [ev.parse_event(message.body) for message in publisher.sent]
    assert [m.message_id for m in publisher.sent] == [str(e.id) for e in made]
    assert made[0] == REQUESTED
    assert made[1] == FIRST.model_copy(
        update={"data": FIRST.data.model_copy(update={"responded_at": FIRST.time})}
    )
    assert [e.type for e in made[2:]] == ["dicom.cstore.response.missing", "dicom.move.completed"]
    assert made[2].id == later.id
    journal.close()
    outbox.close()


# The outbox of the first releases: no subject, sent_at or format, AUTOINCREMENT and a
# UNIQUE event id. Each later release added one of those columns (migrations 2, 3, 4).
FIRST_SCHEMA = """
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL, routing_key TEXT NOT NULL, correlation_id TEXT,
    time TEXT NOT NULL, body BLOB NOT NULL
)
"""


def outbox_version(path: Path) -> list[tuple[int]]:
    with sqlite3.connect(path) as db:
        found = db.execute(f"SELECT version FROM {VERSIONS_TABLE} WHERE store = 'outbox'")
        rows = found.fetchall()
    db.close()
    return rows


def outbox_columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
    db.close()
    return columns


@pytest.mark.parametrize("columns_added", [0, 1, 2])
def test_an_outbox_of_any_earlier_release_is_migrated_and_keeps_its_rows(
    tmp_path: Path, columns_added: int
) -> None:
    # given an outbox as a release before versions left it, with an event spooled
    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_SCHEMA)
        for column in ("subject", "sent_at")[:columns_added]:
            db.execute(f"ALTER TABLE outbox ADD COLUMN {column} TEXT")
        db.execute(
            "INSERT INTO outbox (event_id, type, routing_key, correlation_id, time, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                str(FIRST.id),
                FIRST.type,
                FIRST.routing_key,
                MOVE,
                FIRST.time.isoformat(),
                FIRST.model_dump_json().encode(),
            ),
        )
    db.close()
    # when this release opens it
    outbox = Outbox(path)
    # then it has every column, at the current version, and the event is still there
    (row,) = outbox.peek(10)
    outbox.close()
    assert row.event_id == str(FIRST.id)
    assert outbox_columns(path) == outbox_columns_of_a_new_file(tmp_path)
    assert outbox_version(path) == [(OUTBOX_SCHEMA.version,)]


def outbox_columns_of_a_new_file(tmp_path: Path) -> list[str]:
    Outbox(tmp_path / "new.sqlite").close()
    return outbox_columns(tmp_path / "new.sqlite")


def test_a_new_outbox_is_at_the_current_version_and_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    MoveJournal(path)  # the journal opens the same file without migrating it again
    Outbox(path).close()
    assert outbox_version(path) == [(OUTBOX_SCHEMA.version,)]
    assert outbox_columns(path)[-3:] == ["subject", "sent_at", "format"]


def test_an_outbox_of_a_newer_release_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {VERSIONS_TABLE} SET version = version + 1")
    db.close()
    with pytest.raises(ConfigError) as refused:
        Outbox(path)
    newer = OUTBOX_SCHEMA.version + 1
    assert str(refused.value) == (
        f"outbox {str(path)!r}: the outbox schema is at version {newer}, newer than this "
        f"release's {OUTBOX_SCHEMA.version}; refusing to open it (use the release that wrote it)"
    )
