"""Pure: DICOM audit messages (PS3.15 A.5) from events, and their RFC 5424 syslog frames.

Transfers are aggregated as IHE ATNA expects: one "Begin Transferring DICOM
Instances" and one "DICOM Instances Transferred" per (association, study),
with the SOP classes and their instance counts, not one message per
instance. A rejected association is a "Security Alert". Message ids are
derived from what they describe, so building them again (a replay, a
redelivery) spools nothing new.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5
from xml.etree import ElementTree as ET

from dimsebus.schemas import events as ev

PatientPolicy = Literal["keep", "omit"]
BEGIN = ("110102", "Begin Transferring DICOM Instances")
TRANSFERRED = ("110104", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "Security Alert")
NODE_AUTHENTICATION = ("110126", "Node Authentication")
RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
SYSLOG_PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)


@dataclass(frozen=True, slots=True)
class AuditMessage:
    """One audit message, ready to spool."""

    id: UUID
    time: dt.datetime
    kind: str
    xml: bytes


@dataclass(frozen=True, slots=True)
class Sent:
    """One C-STORE sub-operation as the audit trail recorded it."""

    association: ev.AssociationRef
    study_uid: str
    sop_class_uid: str
    patient_id: str | None
    succeeded: bool
    move_originator: ev.MoveOriginator | None
    operation: ev.Operation
    at: dt.datetime

    @classmethod
    def of(cls, event: ev.CStoreResponseReceived | ev.CStoreResponseMissing) -> Sent | None:
        """The transfer an event reports, or None without a study to aggregate it under."""
        data = event.data
        if data.study_instance_uid is None:
            return None
        succeeded = isinstance(data, ev.CStoreResponseReceivedData) and data.status_category in (
            "success",
            "warning",
        )
        return cls(
            data.association,
            data.study_instance_uid,
            data.affected_sop_class_uid,
            data.patient_id,
            succeeded,
            data.move_originator,
            data.operation,
            event.time,
        )


def begin_transferring(
    first: Sent, audit_source: str, policy: PatientPolicy = "keep"
) -> AuditMessage:
    """Begin Transferring DICOM Instances, at the first sub-operation of (association, study)."""
    root = _message(BEGIN, "E", first.at, 0)
    _participants(root, first)
    _source(root, audit_source)
    _study(root, first.study_uid, {})
    _patient(root, first.patient_id, policy)
    return _done(root, _id("begin", first), first.at, "begin")


@dataclass(slots=True)
class Transfers:
    """One (association, study)'s sub-operations as counted: the first, how many, how many
    failed, and the SOP classes of those that arrived. Counts, not the list: an association
    can carry a 10,000-instance move."""

    first: Sent
    total: int = 0
    failed: int = 0
    classes: Counter[str] = field(default_factory=Counter)

    def add(self, sent: Sent) -> None:
        """Count one more sub-operation."""
        self.total += 1
        if sent.succeeded:
            self.classes[sent.sop_class_uid] += 1
        else:
            self.failed += 1

    @classmethod
    def of(cls, sent: Iterable[Sent]) -> Transfers:
        """The sub-operations ``sent`` (of one association and study, at least one) counted."""
        found: Transfers | None = None
        for item in sent:
            found = found or cls(item)
            found.add(item)
        if found is None:
            raise ValueError("sent: no sub-operations to count")
        return found


def instances_transferred(
    sent: Transfers | Iterable[Sent],
    ended_at: dt.datetime,
    audit_source: str,
    policy: PatientPolicy = "keep",
) -> AuditMessage:
    """DICOM Instances Transferred, for all sub-operations of one (association, study)."""
    counted = sent if isinstance(sent, Transfers) else Transfers.of(sent)
    first, failed, total = counted.first, counted.failed, counted.total
    outcome = 0 if failed == 0 else 8 if failed == total else 4
    root = _message(TRANSFERRED, "R", ended_at, outcome)
    if failed:
        ET.SubElement(
            root[0], "EventOutcomeDescription"
        ).text = f"{failed} of {total} instances not transferred"
    _participants(root, first)
    _source(root, audit_source)
    _study(root, first.study_uid, counted.classes)
    _patient(root, first.patient_id, policy)
    return _done(root, _id("transferred", first), ended_at, "transferred")


def by_study(sent: Iterable[Sent]) -> list[Transfers]:
    """Sub-operations of one association counted by study, in a stable order."""
    groups: dict[str, Transfers] = {}
    for item in sent:
        if item.study_uid not in groups:
            groups[item.study_uid] = Transfers(item)
        groups[item.study_uid].add(item)
    return [groups[study] for study in sorted(groups)]


def security_alert(event: ev.AssociationRejected, audit_source: str) -> AuditMessage:
    """Security Alert, for an association the node rejected or was rejected by."""
    data = event.data
    return _alert(
        event.id,
        NODE_AUTHENTICATION,
        data.association,
        data.at,
        f"association {data.result}ly rejected by {data.source}: {data.reason_text}",
        f"A-ASSOCIATE-RJ reason {data.reason}: {data.reason_text}",
        audit_source,
    )


def access_alert(event: ev.AccessRefused, audit_source: str) -> AuditMessage:
    """Security Alert, for an association or request the node's access control refused.

    PS3.15 A.5.3.11: Node Authentication for a rejected association, Use of
    Restricted Function for a refused request.
    """
    data = event.data
    refused = (
        "A-ASSOCIATE-RQ rejected"
        if data.service == "association"
        else f"C-{data.service.upper()} refused 0x{data.status or 0:04X}"
    )
    return _alert(
        event.id,
        NODE_AUTHENTICATION if data.service == "association" else RESTRICTED_FUNCTION,
        data.association,
        data.at,
        f"{refused}: {data.reason}: {data.detail}",
        f"{refused} ({data.reason}); {data.suppressed} more from this address not reported",
        audit_source,
    )


def _alert(
    event_id: UUID,
    type_code: tuple[str, str],
    peer: ev.AssociationRef,
    at: dt.datetime,
    outcome: str,
    description: str,
    audit_source: str,
) -> AuditMessage:
    root = _message(SECURITY_ALERT, "E", at, 4)
    _code(root[0], "EventTypeCode", type_code[0], "DCM", type_code[1])
    ET.SubElement(root[0], "EventOutcomeDescription").text = outcome
    reporter = _participant(root, peer.local_ae_title, None, requestor=False)
    _code(reporter, "RoleIDCode", "110150", "DCM", "Application")
    performer = _participant(root, peer.peer_ae_title, peer.peer_host, requestor=True)
    _code(performer, "RoleIDCode", "110151", "DCM", "Application Launcher")
    _source(root, audit_source)
    alert = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": f"dicom://{peer.peer_ae_title}@{peer.peer_host}:{peer.peer_port}",
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "13",
        },
    )
    _code(alert, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
    ET.SubElement(alert, "ParticipantObjectDescription").text = description
    return _done(root, uuid5(NAMESPACE_URL, f"dimsebus:audit:alert:{event_id}"), at, "alert")


def syslog_frame(message: AuditMessage, hostname: str, app_name: str = "dimsebus") -> bytes:
    """RFC 5424 message with the XML as MSG, octet-counted as RFC 5425 and RFC 6587 frame it."""
    stamp = (
        message.time.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    header = f"<{SYSLOG_PRI}>1 {stamp} {hostname or '-'} {app_name} - IHE+RFC-3881 - "
    payload = header.encode() + b"\xef\xbb\xbf" + message.xml
    return f"{len(payload)} ".encode() + payload


# -- building blocks ------------------------------------------------------------------------


def _message(event: tuple[str, str], action: str, at: dt.datetime, outcome: int) -> ET.Element:
    root = ET.Element("AuditMessage")
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": at.astimezone(dt.UTC).isoformat(),
            "EventOutcomeIndicator": str(outcome),
        },
    )
    _code(identification, "EventID", event[0], "DCM", event[1])
    return root


def _participants(root: ET.Element, sent: Sent) -> None:
    """Source (the node), destination (the peer), and the C-MOVE's requestor if any."""
    peer = sent.association
    move = sent.move_originator
    kind = sent.operation.kind
    source = _participant(root, peer.local_ae_title, None, requestor=kind == "store", ae_title=True)
    _code(source, "RoleIDCode", "110153", "DCM", "Source Role ID")
    destination = _participant(
        root, peer.peer_ae_title, peer.peer_host, requestor=kind == "get", ae_title=True
    )
    _code(destination, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    if move is not None:
        _participant(root, move.ae_title, None, requestor=True, ae_title=True)


def _participant(
    root: ET.Element, user: str, host: str | None, *, requestor: bool, ae_title: bool = False
) -> ET.Element:
    attributes = {"UserID": user, "UserIsRequestor": "true" if requestor else "false"}
    if host:
        attributes |= {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "2"}
    element = ET.SubElement(root, "ActiveParticipant", attributes)
    if ae_title:
        _code(element, "UserIDTypeCode", "110119", "DCM", "Station AE Title")
    return element


def _source(root: ET.Element, audit_source: str) -> None:
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})


def _study(root: ET.Element, study_uid: str, sop_classes: Counter[str] | dict[str, int]) -> None:
    study = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": study_uid,
            "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        },
    )
    _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    if sop_classes:
        description = ET.SubElement(study, "ParticipantObjectDescription")
        for uid, count in sorted(sop_classes.items()):
            ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})


def _patient(root: ET.Element, patient_id: str | None, policy: PatientPolicy) -> None:
    """The patient, identified as the node's PHI policy let the ID leave (hashed by default)."""
    if patient_id is None or policy == "omit":
        return
    patient = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": patient_id,
            "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1",
        },
    )
    _code(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text}
    )


def _id(kind: str, sent: Sent) -> UUID:
    return uuid5(NAMESPACE_URL, f"dimsebus:audit:{kind}:{sent.association.id}:{sent.study_uid}")


def _done(root: ET.Element, message_id: UUID, at: dt.datetime, kind: str) -> AuditMessage:
    xml = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return AuditMessage(message_id, at, kind, xml.replace(b"\n", b""))
