"""The budget of C-STORE-RSPs that answer nothing, and the one event they become."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.services.node.capture import Stamp, StoreResponse
from dimsebus.services.node.salvage import left_out_event, split_uids
from dimsebus.services.node.unsolicited import UNSOLICITED_LIMIT, Unsolicited, unsolicited_event

STAMP = Stamp(uuid.UUID(int=7), dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "dimsebus://node/n1")
ASSOCIATION = uuid.UUID(int=8)


def junk(number: int) -> StoreResponse:
    return StoreResponse.of(
        {
            "Status": 0,
            "MessageIDBeingRespondedTo": 40000 + number,
            "AffectedSOPInstanceUID": f"1.2.{number}",
            "ErrorComment": f"junk {number}",
        }
    )


def test_no_unsolicited_response_no_event() -> None:
    assert unsolicited_event(Unsolicited(), ASSOCIATION, STAMP) is None
    assert not Unsolicited().exhausted


def test_the_budget_runs_out_once_at_the_limit() -> None:
    # given responses that answer nothing, one after another
    tally, spent_at = Unsolicited(), []
    for number in range(UNSOLICITED_LIMIT + 5):
        tally = tally.noted(junk(number))
        if tally.just_exhausted:
            spent_at.append(tally.count)
    # then the association is to be aborted exactly once, at the limit
    assert spent_at == [UNSOLICITED_LIMIT]
    assert tally.exhausted
    assert tally.count == UNSOLICITED_LIMIT + 5
    assert tally.first == junk(0)


@given(st.integers(1, 10_000))
def test_any_number_of_them_is_one_event_with_their_count(count: int) -> None:
    tally = Unsolicited()
    for number in range(min(count, 50)):
        tally = tally.noted(junk(number))
    tally = Unsolicited(count, tally.first)
    event = unsolicited_event(tally, ASSOCIATION, STAMP)
    assert isinstance(event, ev.MessageInvalid)
    assert event.data.count == count
    assert event.data.message == "C-STORE-RSP"
    assert event.data.association_id == ASSOCIATION
    assert event.data.message_id == 40000  # the first one's
    assert event.data.fields["ErrorComment"] == "'junk 0'"
    aborted = "aborted the association" in event.data.error
    assert aborted == (count >= UNSOLICITED_LIMIT)


def test_split_uids_keeps_the_valid_ones_in_order() -> None:
    values = ["1.2.3", "1.2.ABC", "1." + "1" * 198, "0.1", "1..2"]
    assert split_uids(values) == (("1.2.3", "0.1"), ("1.2.ABC", "1." + "1" * 198, "1..2"))


def test_uids_left_out_of_a_list_are_named_once_and_counted() -> None:
    invalid = tuple(f"1.2.X{n}" for n in range(40))
    operation = ev.Operation(kind="move", id=uuid.UUID(int=9))
    event = left_out_event(
        "C-MOVE-RSP",
        "FailedSOPInstanceUIDList",
        invalid,
        STAMP,
        association_id=ASSOCIATION,
        message_id=3,
        operation=operation,
    )
    assert isinstance(event, ev.MessageInvalid)
    assert event.data.count == 40
    assert event.data.operation == operation
    assert "1.2.X0" in event.data.error
    assert "and 24 more" in event.data.error
    assert len(event.data.fields) == 16
