"""The facts pynetdicom's threads spool, and ``fact_events.event_of``, which makes their events."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.node import capture, fact_events, facts, moves, salvage
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse
from dimsebus.services.node.fact_records import record_of
from dimsebus.services.node.journal import MoveJournal
from dimsebus.services.node.unsolicited import Unsolicited, unsolicited_event, unsolicited_facts

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=3)
RECEIVED = next(e for e in STORY if isinstance(e, ev.CStoreResponseReceived))
REQUESTED = next(e for e in STORY if isinstance(e, ev.MoveRequested))
SENT = SentStore(**{name: getattr(RECEIVED.data, name) for name in SentStore.__dataclass_fields__})
STAMP = Stamp(RECEIVED.id, RECEIVED.time, RECEIVED.source)
REF = RECEIVED.data.association
MOVE = REQUESTED.data.operation


def spooled_and_made(fact: facts.Fact) -> CloudEvent:
    """The event the relay makes of ``fact`` once it went through the outbox's body."""
    record = record_of(fact)
    assert record.format == facts.FORMAT
    return fact_events.event_of(facts.decode(record.format, record.body))


def test_an_association_fact_makes_the_event_its_thread_used_to_build() -> None:
    # given the facts of an association's life
    contexts = ((1, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2"),)
    established = facts.Established(STAMP, REF, contexts, 16384)
    aborted = facts.Ended(STAMP, REF, "aborted", "peer", "the peer aborted")
    # when the relay makes their events, then they are capture's, under the facts' id
    context = ev.PresentationContext(
        id=1,
        abstract_syntax_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2",
        accepted=True,
    )
    assert spooled_and_made(established) == capture.association_event(
        "established", REF, STAMP, presentation_contexts=(context,), max_pdu_length=16384
    )
    assert spooled_and_made(aborted) == capture.association_event(
        "aborted", REF, STAMP, source="peer", reason="the peer aborted"
    )
    assert spooled_and_made(facts.Ended(STAMP, REF, "released")).type == (
        "dicom.association.released"
    )


def test_the_same_fact_makes_the_same_event_however_often() -> None:
    # given a fact spooled once, when a relay makes its event twice (a crash between)
    fact = facts.Missing(STAMP, SENT, "aborted", "the peer aborted")
    first, second = spooled_and_made(fact), spooled_and_made(fact)
    # then the two are one event: same id, same time, same body
    assert first == second
    assert first.model_dump_json() == second.model_dump_json()
    assert first.id == STAMP.id
    assert first == capture.missing_event(SENT, "aborted", "the peer aborted", STAMP)


raw_values = st.one_of(
    st.none(),
    st.integers(-(2**20), 2**20),
    st.text(max_size=80),
    st.text(st.characters(codec=None, categories=["Cs", "Lu"]), max_size=5),  # lone surrogates
    st.text(min_size=1000, max_size=1100),
    st.binary(max_size=20),
    st.lists(st.text(max_size=10), max_size=3),
    st.booleans(),
    st.builds(salvage.Unreadable, st.text(max_size=20)),
)


@settings(max_examples=150, deadline=None)
@given(
    status=raw_values,
    comment=raw_values,
    named=st.one_of(raw_values, st.just(SENT.affected_sop_instance_uid)),
    extra=st.dictionaries(st.text(max_size=20), raw_values, max_size=4),
)
def test_any_response_becomes_through_its_fact_the_event_the_thread_would_build(
    status: object, comment: object, named: object, extra: dict[str, object]
) -> None:
    # given a response with anything a peer may send, joined to its request
    response = StoreResponse.of(
        {
            **extra,
            "Status": status,
            "ErrorComment": comment,
            "AffectedSOPInstanceUID": named,
            "MessageIDBeingRespondedTo": SENT.message_id,
        }
    )
    # when the thread spools its fact and the relay makes its event
    made = spooled_and_made(facts.Answered(STAMP, SENT, capture.answer_facts(response)))
    # then it is the event the thread built of the raw response before facts
    assert made == capture.response_event(SENT, response, STAMP)
    assert made.id == STAMP.id


@settings(max_examples=100, deadline=None)
@given(
    message=st.text(max_size=80),
    error=st.text(max_size=200),
    message_id=raw_values,
    uid=raw_values,
    fields=st.dictionaries(st.text(max_size=70), raw_values, max_size=70),
    count=st.one_of(st.none(), st.integers(2, 500)),
)
def test_any_invalid_message_becomes_through_its_fact_the_event_the_thread_would_build(
    message: str,
    error: str,
    message_id: object,
    uid: object,
    fields: dict[str, object],
    count: int | None,
) -> None:
    # given what a handler could not turn into its event, with raw values
    given: dict[str, Any] = {
        "association_id": REF.id,
        "message_id": message_id,
        "sop_instance_uid": uid,
        "operation": MOVE,
        "fields": fields,
        "count": count,
    }
    invalid = salvage.invalid_facts(message, error, **given)
    # when it is spooled as a fact and made into its event, then it is the same event
    made = spooled_and_made(facts.Invalid(STAMP, invalid))
    assert made == salvage.invalid_event(message, error, STAMP, **given)


def test_unsolicited_responses_make_one_invalid_event_through_their_fact() -> None:
    tally = Unsolicited().noted(StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": 9}))
    invalid = unsolicited_facts(tally, REF.id)
    assert invalid is not None
    assert spooled_and_made(facts.Invalid(STAMP, invalid)) == unsolicited_event(
        tally, REF.id, STAMP
    )


def test_a_fact_the_contract_rejects_is_an_invalid_message_under_its_id() -> None:
    # given a rejection whose reason the contract does not allow (0 to 255)
    fact = facts.Rejected(STAMP, REF, "permanent", "service_user", 999, "who?")
    # when its event is made, then it is dicom.message.invalid, never an exception
    made = spooled_and_made(fact)
    assert isinstance(made, ev.MessageInvalid)
    assert made.id == STAMP.id
    assert "rejected fact could not be made its event" in made.data.error
    assert made.data.association_id == REF.id


def test_a_move_request_and_its_end_make_their_events_and_journal_keys(tmp_path: Path) -> None:
    # given the facts of a C-MOVE-RQ and of its final C-MOVE-RSP
    data = REQUESTED.data
    details = {
        "affected_sop_class_uid": data.affected_sop_class_uid,
        "query_level": data.query_level,
        "keys": dict(data.keys),
        "priority": data.priority,
        "requested_at": data.requested_at,
        "move_destination": data.move_destination,
    }
    stamp = Stamp(REQUESTED.id, REQUESTED.time, REQUESTED.source)
    requested = facts.Requested(stamp, "move", data.association, MOVE, data.message_id, details)
    counts = ev.SubOperationCounts(remaining=0, completed=3, failed=0, warning=0)
    completed = facts.Completed(
        STAMP,
        "move",
        data.association,
        MOVE,
        data.message_id,
        0,
        {"move_destination": data.move_destination, "counts": counts},
    )
    # when they are spooled and made
    assert spooled_and_made(requested) == REQUESTED
    made = spooled_and_made(completed)
    # then the completed event is the final response's, and the journal keys are the events'
    assert isinstance(made, ev.MoveCompleted)
    assert (made.data.status_category, made.data.counts) == ("success", counts)
    for fact, event in ((requested, REQUESTED), (completed, made)):
        record = record_of(fact)
        assert (record.type, record.correlation_id, record.subject) == (
            event.type,
            event.correlation_id,
            event.subject,
        )
    # and a move opened in the journal with its requested fact reads back as its event
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.append_opening(record_of(requested), ["1.2.3"])
    journal = MoveJournal(tmp_path / "outbox.sqlite")
    [opened] = journal.open_moves()
    assert opened.requested == REQUESTED
    # and the completed fact closes it
    outbox.append_records([record_of(completed)])
    assert journal.open_moves() == []
    journal.close()
    outbox.close()


def test_unsent_and_refused_facts_make_their_events() -> None:
    originator = ev.MoveOriginator(ae_title="MOVESCU", message_id=7)
    unsent = facts.Unsent(
        STAMP, MOVE, "DEST", ("1.2.3",), 1, originator, {"site": "a"}, "unreachable", "no"
    )
    assert spooled_and_made(unsent) == capture.unsent_event(
        MOVE, "DEST", ["1.2.3"], 1, originator, {"site": "a"}, "unreachable", "no", STAMP
    )
    details = {
        "service": "association",
        "reason": "calling_ae_title_not_recognised",
        "detail": "who",
        "suppressed": 0,
    }
    refused = facts.Refused(STAMP, REF, details)
    assert spooled_and_made(refused) == capture.access_refused_event(REF, STAMP, **details)


def test_a_heading_is_the_events_type_operation_and_subject() -> None:
    # given facts whose events are valid, then each record's keys are its event's
    response = StoreResponse.of({"Status": [1], "MessageIDBeingRespondedTo": 1})
    for fact in (
        facts.Missing(STAMP, SENT, "aborted", "x"),
        facts.Answered(STAMP, SENT, capture.answer_facts(response)),
        facts.Answered(
            STAMP,
            SENT,
            dataclasses.replace(capture.answer_facts(response), status=0, status_problem=None),
        ),
        facts.Ended(STAMP, REF, "released"),
    ):
        event = fact_events.event_of(fact)
        record = record_of(fact)
        assert (record.type, record.subject, record.event_id) == (
            event.type,
            event.subject,
            str(event.id),
        )
        if record.correlation_id is not None:
            assert record.correlation_id == event.correlation_id


def test_the_nodes_answer_to_its_own_pulls_store_is_made_through_its_fact() -> None:
    # given a C-STORE-RQ received for the node's own C-MOVE, refused for want of room
    store = moves.ReceivedStore(
        association=REF.model_copy(update={"role": "acceptor"}),
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=3,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid=SENT.affected_sop_instance_uid,
        originator_message_id=5,
        requested_at=T0,
        status=0xA700,
        error_comment="no space",
    )
    fact = facts.ResponseSent(STAMP, MOVE, 2, {"site": "a"}, "DIMSEBUS", store)
    # when it is spooled and made, then it is the move's event, keyed as it is
    made = spooled_and_made(fact)
    assert made == moves.sent_answer_event(MOVE, 2, {"site": "a"}, store, STAMP, "DIMSEBUS")
    assert made.routing_key == "dicom.cstore.response.sent.failure"
    record = record_of(fact)
    assert (record.type, record.correlation_id, record.subject) == (
        made.type,
        made.correlation_id,
        made.subject,
    )


def test_a_fact_spooled_with_a_value_of_the_wrong_type_is_an_invalid_message() -> None:
    # given a fact the thread spooled with a value its kind does not take (None for an int)
    store = moves.ReceivedStore(
        association=REF,
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=3,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid=SENT.affected_sop_instance_uid,
        originator_message_id=None,  # type: ignore[arg-type]
        requested_at=T0,
        status=0,
    )
    record = record_of(facts.ResponseSent(STAMP, MOVE, 1, {}, "DIMSEBUS", store))
    # when the relay makes its event, then it is dicom.message.invalid under the fact's id
    made = fact_events.row_event(record)
    assert isinstance(made, ev.MessageInvalid)
    assert (made.id, made.time) == (STAMP.id, STAMP.time)
    assert "response_sent fact does not read back" in made.data.error
    assert "originator_message_id" in made.data.error


PULL = ev.MoveCommandData.model_validate(
    {
        "operation": {"kind": "move", "id": MOVE.id},
        "node_id": "n1",
        "source": {"ae_title": "QRSCP", "host": "127.0.0.1", "port": 104},
        "destination_ae_title": "DIMSEBUS",
        "query_level": "IMAGE",
        "study_instance_uid": "1.2.3",
        "sop_instance_uids": ["1.2.3.4", "1.2.3.5"],
        "attempt": 2,
        "labels": {"job": "j1"},
    }
)


def test_a_pulls_responses_and_unsent_reissue_are_made_through_their_facts() -> None:
    # given a C-MOVE-RSP of the node's own pull, pending then final, and a reissue unsent
    pending = moves.MoveResponse(0xFF00, 1, 1, 0, 0)
    final = moves.MoveResponse(0xB000, 0, 1, 1, 0, "one failed", ("1.2.3.5",))
    for response in (pending, final):
        fact = facts.MoveResponded(STAMP, PULL, REF, 5, response)
        # when spooled and made, then each is the event the worker thread used to build
        made = spooled_and_made(fact)
        assert made == moves.response_event(PULL, REF, 5, response, STAMP)
        record = record_of(fact)
        assert (record.type, record.correlation_id, record.subject) == (
            made.type,
            made.correlation_id,
            made.subject,
        )
    unsent = facts.PullUnsent(STAMP, PULL, "association_lost", "no final C-MOVE-RSP")
    made = spooled_and_made(unsent)
    assert made == moves.unsent_event(PULL, "association_lost", "no final C-MOVE-RSP", STAMP)
    assert record_of(unsent).type == made.type == "dicom.cstore.unsent"
