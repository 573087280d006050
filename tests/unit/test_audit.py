"""The audit trail's pure parts and its SQLite store: the chain, the messages, the frames."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import every_event, move_story, sequential_ids
from dimsebus.services.audit.chain import GENESIS, next_record, verify
from dimsebus.services.audit.messages import (
    Sent,
    access_alert,
    begin_transferring,
    by_study,
    instances_transferred,
    security_alert,
    syslog_frame,
)
from dimsebus.services.audit.store import AuditStore, Query

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=8)
STUDY = "1.2.826.0.1.3680043.8.498.77"


def with_study(
    event: CloudEvent, study: str = STUDY, patient: str | None = "hmac-sha256:ab12"
) -> Any:
    data = event.data.model_copy(update={"study_instance_uid": STUDY, "patient_id": patient})
    return event.model_copy(update={"data": data})


RESPONSES = [
    with_study(e)
    for e in STORY
    if isinstance(e, ev.CStoreResponseReceived | ev.CStoreResponseMissing)
]


def chain(events: list[CloudEvent]) -> list[Any]:
    records, prev = [], GENESIS
    for seq, event in enumerate(events, 1):
        record = next_record(seq, prev, event)
        records.append(record)
        prev = record.hash
    return records


# -- the chain ----------------------------------------------------------------------------


def test_an_untouched_chain_verifies() -> None:
    result = verify(chain(STORY))
    assert result.ok
    assert result.intact == len(STORY)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"status": 0xC123}, "its content does not match its hash"),
        ({"peer_ae_title": "ELSEWHERE"}, "its content does not match its hash"),
        ({"prev_hash": "f" * 64}, "its previous hash is not the hash of the record before it"),
    ],
)
def test_an_edited_record_is_the_one_reported(change: dict[str, Any], problem: str) -> None:
    records = chain(STORY)
    records[5] = dataclasses.replace(records[5], **change)
    result = verify(records)
    assert (result.broken_at, result.problem, result.intact) == (6, problem, 5)


def test_a_removed_record_is_reported() -> None:
    records = chain(STORY)
    del records[3]
    result = verify(records)
    assert result.broken_at == 5
    assert result.problem == "record 4 is missing before 5"


def test_the_hash_covers_the_whole_event() -> None:
    records = chain(STORY)
    event = dict(records[2].event)
    event["subject"] = "tampered"
    records[2] = dataclasses.replace(records[2], event=event)
    assert verify(records).broken_at == 3


def test_an_invalid_message_is_recorded_under_its_association() -> None:
    # given the node's record of a C-STORE-RSP that answered no request
    invalid = next(e for e in STORY if isinstance(e, ev.MessageInvalid))
    # when it is chained onto the trail
    record = next_record(1, GENESIS, invalid)
    # then an auditor finds it by its association, like the association's other events
    assert record.event_type == "dicom.message.invalid"
    assert record.association_id == str(invalid.data.association_id)


# -- messages ---------------------------------------------------------------------------------


def parse(xml: bytes) -> ET.Element:
    return ET.fromstring(xml)


def test_instances_transferred_aggregates_an_association_study() -> None:
    sent = [s for s in (Sent.of(e) for e in RESPONSES) if s is not None]
    groups = by_study(sent)
    assert len(groups) == 1
    message = instances_transferred(groups[0], T0, "dimsebus-test")
    root = parse(message.xml)
    event = root.find("EventIdentification")
    assert event is not None
    assert event.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    assert event.get("EventOutcomeIndicator") == "4"  # some of the 8 failed
    roles = [p.find("RoleIDCode") for p in root.findall("ActiveParticipant")]
    codes = [r.get("csd-code") for r in roles if r is not None]
    assert codes == ["110153", "110152"]  # source: the node; destination: the peer
    users = [p.get("UserID") for p in root.findall("ActiveParticipant")]
    assert users == ["DIMSEBUS", "STORESCP", "MOVESCU"]  # and the C-MOVE's requestor
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    sop_classes = study.findall("ParticipantObjectDescription/SOPClass")
    assert [c.get("NumberOfInstances") for c in sop_classes] == ["6"]  # the ones that arrived
    assert patient.get("ParticipantObjectID") == "hmac-sha256:ab12"
    assert b"\n" not in message.xml


def test_message_ids_follow_from_what_they_describe() -> None:
    sent = [s for s in (Sent.of(e) for e in RESPONSES) if s is not None]
    assert instances_transferred(sent, T0, "a").id == instances_transferred(sent, T0, "a").id
    assert begin_transferring(sent[0], "a").id != instances_transferred(sent, T0, "a").id


def test_patient_can_be_left_out_of_messages() -> None:
    sent = [s for s in (Sent.of(e) for e in RESPONSES) if s is not None]
    root = parse(instances_transferred(sent, T0, "a", policy="omit").xml)
    assert len(root.findall("ParticipantObjectIdentification")) == 1


def test_a_refused_request_is_a_security_alert_of_restricted_use() -> None:
    # given the example story's refused C-FIND and rejected association
    refusals = [
        e for e in every_event("n1", T0, sequential_ids()) if e.type == "dicom.access.refused"
    ]
    rejected, refused = (e for e in refusals if isinstance(e, ev.AccessRefused))
    # when each becomes an audit message
    codes = [
        parse(access_alert(e, "dimsebus-test").xml).find("EventIdentification/EventTypeCode")
        for e in (rejected, refused)
    ]
    # then both are Security Alerts: Node Authentication, then Use of Restricted Function
    assert [c.get("csd-code") for c in codes if c is not None] == ["110126", "110132"]
    root = parse(access_alert(refused, "dimsebus-test").xml)
    outcome = root.find("EventIdentification/EventOutcomeDescription")
    assert outcome is not None
    assert "C-FIND refused 0x0124" in (outcome.text or "")


def test_a_rejected_association_is_a_security_alert() -> None:
    rejected = next(e for e in STORY if isinstance(e, ev.AssociationRejected))
    root = parse(security_alert(rejected, "dimsebus-test").xml)
    assert root.find("EventIdentification/EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    description = root.find("ParticipantObjectIdentification/ParticipantObjectDescription")
    assert description is not None
    assert "A-ASSOCIATE-RJ" in (description.text or "")


def test_syslog_frame_is_rfc5424_octet_counted() -> None:
    sent = [s for s in (Sent.of(e) for e in RESPONSES) if s is not None]
    frame = syslog_frame(begin_transferring(sent[0], "a"), "host-1")
    length, _, payload = frame.partition(b" ")
    assert int(length) == len(payload)
    stamp = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    header = rb"<85>1 " + stamp + rb" host-1 dimsebus - IHE\+RFC-3881 - \xef\xbb\xbf<\?xml"
    assert re.match(header, payload)
    parse(payload.split(b"\xef\xbb\xbf", 1)[1])


# -- the store -------------------------------------------------------------------------------


def test_append_is_idempotent_by_event_id_and_queries_filter(tmp_path: Path) -> None:
    store = AuditStore.open(str(tmp_path / "audit.sqlite"))
    added = store.append([*STORY[:10], STORY[3]])
    assert len(added) == 10
    again = store.append(STORY[:12])  # a replay: only the two not yet recorded are added
    assert [r.seq for r in again] == [11, 12]
    assert store.count() == 12
    assert verify(store.records()).intact == 12
    move = next(e for e in STORY if isinstance(e, ev.MoveRequested)).data.operation.id
    by_move = list(store.records(Query(move=str(move)[:8])))
    assert by_move
    assert all(r.operation_id == str(move) for r in by_move)
    assert {r.peer_ae_title for r in store.records(Query(peer="MOVESCU"))} == {"MOVESCU"}
    assert list(store.records(Query(since=T0 + dt.timedelta(days=1)))) == []
    store.close()


def test_spool_keeps_a_message_once_until_sent(tmp_path: Path) -> None:
    store = AuditStore.open(str(tmp_path / "audit.sqlite"))
    store.spool([("m1", "begin", T0, b"frame-1"), ("m2", "alert", T0, b"frame-2")])
    store.spool([("m1", "begin", T0, b"frame-1")])
    assert store.pending() == [("m1", b"frame-1"), ("m2", b"frame-2")]
    store.mark_sent(["m1"], T0)
    assert store.pending() == [("m2", b"frame-2")]
    assert store.spool_depth() == 1
    store.close()
