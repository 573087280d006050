"""The pure capture: a joined C-STORE request and response become exactly the right event."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import events as ev
from services.node.capture import (
    SentStore,
    Stamp,
    StoreResponse,
    missing_event,
    missing_reason,
    protect_patient_id,
    response_event,
)

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
