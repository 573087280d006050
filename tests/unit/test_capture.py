"""The pure capture: a joined C-STORE request and response become exactly the right event."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.services.node.capture import (
    SentStore,
    Stamp,
    StoreResponse,
    answer_event,
    missing_event,
    missing_reason,
    protect_patient_id,
    response_event,
)
from dimsebus.services.node.salvage import Unreadable, association_ref

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
ASSOCIATION = ev.AssociationRef(
    id=uuid.UUID(int=1),
    role="requestor",
    local_ae_title="DIMSEBUS",
    peer_ae_title="STORESCP",
    peer_host="127.0.0.1",
    peer_port=11112,
)
MOVE = ev.Operation(kind="move", id=uuid.UUID(int=2))
SENT = SentStore(
    association=ASSOCIATION,
    presentation_context_id=3,
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    message_id=7,
    affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    affected_sop_instance_uid="1.2.3.4",
    move_originator=ev.MoveOriginator(ae_title="MOVESCU", message_id=1),
    operation=MOVE,
    attempt=2,
    labels={"site": "a"},
    requested_at=T0,
)
STAMP = Stamp(uuid.UUID(int=99), T0 + dt.timedelta(milliseconds=5), "dimsebus://node/n1")


def test_response_carries_the_request_and_the_status() -> None:
    # given a request and its 0xA700 response
    event = response_event(SENT, StoreResponse(status=0xA700, error_comment="disk full"), STAMP)
    # then the event joins both, stamped with the given id and time
    assert isinstance(event, ev.CStoreResponseReceived)
    data = event.data
    assert (data.message_id, data.presentation_context_id, data.attempt) == (7, 3, 2)
    assert (data.status, data.status_category, data.error_comment) == (
        0xA700,
        "failure",
        "disk full",
    )
    assert data.move_originator == SENT.move_originator
    assert data.operation == MOVE
    assert (data.requested_at, data.responded_at) == (T0, STAMP.time)
    assert (event.id, event.subject, event.source) == (STAMP.id, "1.2.3.4", "dimsebus://node/n1")
    assert event.routing_key == "dicom.cstore.response.received.failure"
    assert event.correlation_id == str(MOVE.id)


@given(status=st.integers(0, 0xFFFF))
def test_any_status_becomes_a_valid_event(status: int) -> None:
    event = response_event(SENT, StoreResponse(status=status), STAMP)
    assert isinstance(event, ev.CStoreResponseReceived)
    assert event.data.status == status


@pytest.mark.parametrize("status", [None, -1, 0x10000])
def test_response_without_a_valid_status_is_not_invented(status: int | None) -> None:
    # a response whose Status is absent or impossible cannot say the instance was stored
    event = response_event(SENT, StoreResponse(status=status), STAMP)
    assert isinstance(event, ev.CStoreResponseMissing)
    assert event.data.reason == "invalid_response"
    assert repr(status) in event.data.detail


def test_response_naming_another_instance_keeps_the_request_and_says_so() -> None:
    event = response_event(SENT, StoreResponse(status=0, affected_sop_instance_uid="9.9"), STAMP)
    assert isinstance(event, ev.CStoreResponseReceived)
    assert event.data.affected_sop_instance_uid == "1.2.3.4"
    assert event.data.error_comment == "C-STORE-RSP names SOP instance 9.9"


def test_missing_response() -> None:
    event = missing_event(SENT, "aborted", "A-ABORT from the peer", STAMP)
    assert isinstance(event, ev.CStoreResponseMissing)
    assert (event.data.reason, event.data.detail, event.data.detected_at) == (
        "aborted",
        "A-ABORT from the peer",
        STAMP.time,
    )
    assert event.routing_key == "dicom.cstore.response.missing.failure"


@pytest.mark.parametrize(
    ("source", "waited", "reason"),
    [
        ("local", 30.0, "dimse_timeout"),
        ("local", 1.0, "aborted"),
        ("peer", 30.0, "aborted"),
        ("network", 30.0, "aborted"),
        (None, 30.0, "connection_lost"),
    ],
)
def test_missing_reason(source: str | None, waited: float, reason: str) -> None:
    # a local abort after the DIMSE timeout is pynetdicom giving up on the response
    assert missing_reason(source, waited, dimse_timeout=30.0) == reason


def test_patient_id_leaves_the_node_as_the_policy_says() -> None:
    key = b"site-secret"
    hashed = protect_patient_id("MRN-0042", "hash", key)
    assert hashed is not None
    assert hashed.startswith("hmac-sha256:")
    assert "MRN-0042" not in hashed
    assert hashed == protect_patient_id("MRN-0042", "hash", key)  # the same patient, one value
    assert hashed != protect_patient_id("MRN-0042", "hash", b"other-site")
    assert protect_patient_id("MRN-0042", "omit", key) is None
    assert protect_patient_id("MRN-0042", "keep", key) == "MRN-0042"
    assert protect_patient_id(None, "keep", key) is None


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        ([0, 0], "[0, 0]"),  # a Status of four bytes decodes as two values
        (Unreadable("BytesLengthException: length 3"), "<unreadable: BytesLengthException"),
        ("0000", "'0000'"),
        (True, "True"),
    ],
)
def test_status_that_is_not_one_number_is_not_invented(status: object, shown: str) -> None:
    # given a response whose Status is not one US value
    event = response_event(SENT, StoreResponse(status=status), STAMP)
    # then it cannot say the instance was stored: the response is reported unusable
    assert isinstance(event, ev.CStoreResponseMissing)
    assert event.data.reason == "invalid_response"
    assert shown in event.data.detail


def test_error_comment_with_a_backslash_is_kept_as_text() -> None:
    # given an Error Comment that pydicom split at its backslash into two values
    response = StoreResponse(status=0xA700, error_comment=["disk", "full\x00"])
    # when the response is recorded
    event = response_event(SENT, response, STAMP)
    # then it is the failure it reports, with the comment joined back together
    assert isinstance(event, ev.CStoreResponseReceived)
    assert event.data.error_comment == "disk\\full\x00"


def test_request_the_contract_rejects_is_recorded_as_invalid() -> None:
    # given a C-STORE-RQ sent for a file whose SOP Instance UID has a leading zero
    sent = dataclasses.replace(SENT, affected_sop_instance_uid="1.2.03")
    # when its response arrives
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": 7})
    event = response_event(sent, response, STAMP)
    # then it is dicom.message.invalid, naming the field, the value and the request
    assert isinstance(event, ev.MessageInvalid)
    data = event.data
    assert (data.message, data.association_id, data.message_id) == (
        "C-STORE-RSP",
        ASSOCIATION.id,
        7,
    )
    assert (data.affected_sop_instance_uid, data.operation) == ("1.2.03", MOVE)
    assert "affected_sop_instance_uid" in data.error
    assert "'1.2.03' is not a valid UID" in data.error
    assert data.fields == {"Status": "0", "MessageIDBeingRespondedTo": "7"}
    assert event.routing_key == "dicom.message.invalid"
    assert event.correlation_id == str(MOVE.id)


def test_missing_response_of_an_invalid_request_is_recorded_as_invalid() -> None:
    sent = dataclasses.replace(SENT, transfer_syntax_uid="1.2.840.10008.1.2.1\x00")
    event = missing_event(sent, "aborted", "A-ABORT from the peer", STAMP)
    assert isinstance(event, ev.MessageInvalid)
    assert event.data.message == "C-STORE-RQ"
    assert "transfer_syntax_uid" in event.data.error
    assert "A-ABORT from the peer" in event.data.error


def test_response_to_no_outstanding_request_is_recorded_as_invalid() -> None:
    # given a C-STORE-RSP whose message id the node has no request for
    response = StoreResponse.of({"Status": 0, "MessageIDBeingRespondedTo": 70000})
    # when it is answered
    event = answer_event(None, response, ASSOCIATION.id, STAMP)
    # then it is recorded, with the out-of-range id only among the raw fields
    assert isinstance(event, ev.MessageInvalid)
    assert event.data.message_id is None
    assert "MessageIDBeingRespondedTo 70000 answers no C-STORE-RQ" in event.data.error
    assert event.data.fields["MessageIDBeingRespondedTo"] == "70000"
    assert event.subject == str(ASSOCIATION.id)


@pytest.mark.parametrize(
    ("raw", "title", "problem"),
    [
        ("STORESCP", "STORESCP", None),
        ("  STORESCP  ", "STORESCP", None),
        ("", "UNKNOWN", None),
        ("STORE\\SCP", "STORE?SCP", "it contains a backslash; recorded as 'STORE?SCP'"),
        ("CT\x01", "CT?", "control character"),
        ("ÄRZTE", "?RZTE", "outside the default character repertoire"),
        ("A" * 20, "A" * 16, "length 20 is not 1 to 16"),
    ],
)
def test_ae_title_the_contract_rejects_is_substituted_and_said_so(
    raw: str, title: str, problem: str | None
) -> None:
    ref, problems = association_ref(ASSOCIATION.id, "acceptor", ("DIMSEBUS", raw), "::1", 104)
    assert ref.peer_ae_title == title
    if problem is None:
        assert problems == {}
    else:
        assert problem in problems["peer_ae_title"]
