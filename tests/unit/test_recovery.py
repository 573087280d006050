"""A C-MOVE cut off by a crash: the journal in the outbox file, and what the node says of it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse
from dimsebus.services.node.journal import MoveJournal
from dimsebus.services.node.recovery import interrupted_events
from dimsebus.services.node.storepair import Recorder
from dimsebus.services.tracker.progress import apply, counts, outcome

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=6)
REQUESTED = next(e for e in STORY if isinstance(e, ev.MoveRequested))
RESPONSES = [e for e in STORY if isinstance(e, ev.CStoreResponseReceived)][:2]
MATCHED = [f"1.2.826.0.1.3680043.8.498.1.1.{n}" for n in range(1, 7)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[tuple[Outbox, MoveJournal]]:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    journal = MoveJournal(tmp_path / "outbox.sqlite")
    yield outbox, journal
    journal.close()
    outbox.close()


def stamps() -> Iterator[Stamp]:
    for n, event_id in enumerate(sequential_ids(900)):
        yield Stamp(event_id, T0 + dt.timedelta(minutes=5, seconds=n), "dimsebus://node/n1")


def spool_response(outbox: Outbox, response: ev.CStoreResponseReceived, recorded: bool) -> None:
    """Spool a response event, or (as the node's DIMSE thread does) the exchange's record."""
    if not recorded:
        outbox.append([response])
        return
    data = response.data
    sent = SentStore(
        **{name: getattr(data, name) for name in SentStore.__dataclass_fields__},
    )
    answer = StoreResponse.of({"Status": data.status, "MessageIDBeingRespondedTo": data.message_id})
    outbox.append_record(
        Recorder().record(sent, answer, Stamp(response.id, response.time, response.source))
    )


@pytest.mark.parametrize("recorded", [False, True], ids=["events", "exchange records"])
def test_a_move_cut_off_reports_its_unanswered_instances(
    spool: tuple[Outbox, MoveJournal], recorded: bool
) -> None:
    outbox, journal = spool
    # given a move of 6 instances, 2 of them answered, and no final response (a crash)
    journal.opened(REQUESTED, MATCHED)
    outbox.append([REQUESTED])
    for response in RESPONSES:
        spool_response(outbox, response, recorded)
    # when the node starts again
    [cut_off] = journal.open_moves()
    events = interrupted_events(cut_off, {"site": "x"}, stamps().__next__)
    # then the 4 unanswered are unsent (node_stopped), and the move is interrupted
    unsent, interrupted = events
    assert isinstance(unsent, ev.CStoreUnsent)
    assert unsent.data.reason == "node_stopped"
    assert list(unsent.data.sop_instance_uids) == cut_off.unanswered
    assert len(cut_off.unanswered) == 4
    assert unsent.data.move_originator == ev.MoveOriginator(ae_title="MOVESCU", message_id=1)
    assert isinstance(interrupted, ev.MoveInterrupted)
    assert (interrupted.data.matched, interrupted.data.unanswered) == (6, 4)
    # and once those are spooled, the journal forgets the move
    outbox.append(events)
    assert journal.open_moves() == []


def test_a_completed_move_leaves_nothing_open(spool: tuple[Outbox, MoveJournal]) -> None:
    outbox, journal = spool
    journal.opened(REQUESTED, MATCHED)
    outbox.append([e for e in STORY if e.correlation_id == str(REQUESTED.data.operation.id)])
    assert journal.open_moves() == []


def test_the_tracker_accounts_for_an_interrupted_move(spool: tuple[Outbox, MoveJournal]) -> None:
    outbox, journal = spool
    journal.opened(REQUESTED, MATCHED)
    for response in RESPONSES:
        outbox.append([response])
    [cut_off] = journal.open_moves()
    state = None
    for event in [REQUESTED, *RESPONSES, *interrupted_events(cut_off, {}, stamps().__next__)]:
        state = apply(state, event)
    assert state is not None
    tally = counts(state)
    assert (tally.completed, tally.failed, tally.remaining) == (1, 5, 0)  # one 0xA700 in STORY
    assert state.responses == {"received": 2}
    assert outcome(state, T0 + dt.timedelta(hours=1), dt.timedelta(hours=2)) == (
        "completed_with_failures"
    )
