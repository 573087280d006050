"""The pure function the relay makes a spooled C-STORE pair's event with (``storepair``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import OutboxRow, Record
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse, response_event
from dimsebus.services.node.fact_events import row_event as event_of
from dimsebus.services.node.facts import FORMAT
from dimsebus.services.node.storepair import (
    EARLIER_FORMAT,
    PAIR_FORMAT,
    PairRecord,
    Recorder,
    pair_event,
)

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=3)
RECEIVED = next(e for e in STORY if isinstance(e, ev.CStoreResponseReceived))
SENT = SentStore(
    **{name: getattr(RECEIVED.data, name) for name in SentStore.__dataclass_fields__},
)
STAMP = Stamp(RECEIVED.id, RECEIVED.time, RECEIVED.source)


def recorded(response: StoreResponse, sent: SentStore = SENT) -> Record:
    return Recorder().record(sent, response, STAMP)


def as_row(record: Record) -> OutboxRow:
    return OutboxRow(
        1, record.event_id, record.type, record.type, None, record.time, record.body, record.format
    )


def test_a_pairs_event_is_the_one_the_dimse_thread_would_build() -> None:
    # given a request and its plain warning response, spooled as a pair record
    response = StoreResponse.of({"Status": 0xB000, "MessageIDBeingRespondedTo": SENT.message_id})
    record = recorded(response)
    # when the relay makes its event
    made = event_of(as_row(record))
    # then it is capture's event of the same facts, under the record's id and time
    assert record.format == FORMAT
    assert made == response_event(SENT, response, STAMP)
    assert isinstance(made, ev.CStoreResponseReceived)
    assert made.data.status_category == "warning"
    assert str(made.id) == record.event_id


def test_a_record_reads_back_as_it_was_written() -> None:
    response = StoreResponse.of(
        {"Status": 0, "MessageIDBeingRespondedTo": 1, "ErrorComment": 'a "quoted" \\ comment'}
    )
    body = recorded(response).body
    pair = PairRecord.decode(body)
    assert pair.encode() == body
    assert pair.response == (0, 1, None, 'a "quoted" \\ comment')
    assert pair.event_id == str(RECEIVED.id)


def test_an_earlier_record_makes_the_same_event() -> None:
    # given the same pair in the earlier format (two arrays: context, then the rest)
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": SENT.message_id})
    pair = PairRecord.decode(recorded(response).body)
    earlier = f"[{pair.context},{_values(pair)}]".encode()
    # when each is made into its event
    row = as_row(dataclasses.replace(recorded(response), format=EARLIER_FORMAT, body=earlier))
    # then the two are one event
    assert PairRecord.decode_earlier(earlier) == pair
    assert event_of(row) == pair_event(pair)


def test_facts_the_contract_rejects_make_an_invalid_message_not_an_exception() -> None:
    # given a request whose SOP Instance UID the contract rejects (a leading zero)
    sent = dataclasses.replace(SENT, affected_sop_instance_uid="1.02.3")
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": sent.message_id})
    # when its pair is made into its event
    made = event_of(as_row(recorded(response, sent)))
    # then it is dicom.message.invalid, naming the request and what was wrong
    assert isinstance(made, ev.MessageInvalid)
    assert made.data.message == "C-STORE-RSP"
    assert made.data.affected_sop_instance_uid == "1.02.3"
    assert "affected_sop_instance_uid" in made.data.error


def test_a_pair_spooled_before_facts_had_tags_makes_the_same_event() -> None:
    # given the same pair as PAIR_FORMAT kept it: the array without its tag
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": SENT.message_id})
    spooled = recorded(response)
    untagged = b"[" + spooled.body.split(b",", 1)[1]
    row = as_row(dataclasses.replace(spooled, format=PAIR_FORMAT, body=untagged))
    # when the relay makes its event, then it is the tagged record's
    assert event_of(row) == event_of(as_row(spooled))
    assert spooled.body.startswith(b'["pair",')


def _values(pair: PairRecord) -> str:
    return json.dumps(
        [*pair.request, *pair.response, pair.event_id, pair.time, pair.source],
        separators=(",", ":"),
    )
