"""The move journal is written by the outbox, in the transaction of the rows that change it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.node.journal import MoveJournal

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=3)
REQUESTED = next(e for e in STORY if isinstance(e, ev.MoveRequested))
RESPONSES = [
    e for e in STORY if isinstance(e, ev.CStoreResponseReceived | ev.CStoreResponseMissing)
]
MATCHED = [f"1.2.826.0.1.3680043.8.498.1.1.{n}" for n in range(1, 4)]


def test_a_moves_opening_is_spooled_with_its_requested_event(tmp_path: Path) -> None:
    # given an outbox and the journal in its file
    outbox, journal = Outbox(tmp_path / "o.sqlite"), MoveJournal(tmp_path / "o.sqlite")
    # when the Move SCP spools a C-MOVE's requested event, opening it
    outbox.append_opening(REQUESTED, MATCHED)
    # then the event waits in the outbox and the move is open, none of it answered
    assert [row.event_id for row in outbox.peek(10)] == [str(REQUESTED.id)]
    [open_move] = journal.open_moves()
    assert open_move.requested == REQUESTED
    assert open_move.unanswered == MATCHED
    # and its responses, spooled in one batch with another move's, are noted for it alone
    outbox.append([*RESPONSES[:2], *[e for e in STORY if isinstance(e, ev.GetCompleted)]])
    assert journal.open_moves()[0].unanswered == MATCHED[2:]
    journal.close()
    outbox.close()


def test_a_response_and_the_final_event_in_one_batch_close_the_move(tmp_path: Path) -> None:
    outbox, journal = Outbox(tmp_path / "o.sqlite"), MoveJournal(tmp_path / "o.sqlite")
    outbox.append_opening(REQUESTED, MATCHED)
    outbox.append([*RESPONSES, *[e for e in STORY if isinstance(e, ev.MoveCompleted)]])
    assert journal.open_moves() == []
    assert outbox.depth() == 1 + len(RESPONSES) + 1
    journal.close()
    outbox.close()
