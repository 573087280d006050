"""Pure capture: what the node sent and what came back, turned into contract events.

The shell (``services.node.dimse``) records each C-STORE-RQ it sends as a
``SentStore``, joins the C-STORE-RSP to it by (association, message id), and
calls these functions. Nothing here touches a socket, a clock or a random
source: ids and times come in as arguments.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from schemas import events as ev
from schemas.envelope import CloudEvent
from schemas.status import Service, describe_status


@dataclass(frozen=True, slots=True)
class Stamp:
    """The envelope facts the shell supplies: a fresh id, the time, the node's source URI."""

    id: UUID
    time: dt.datetime
    source: str


@dataclass(frozen=True, slots=True)
class SentStore:
    """A C-STORE-RQ as the node sent it, with the job it belongs to."""

    association: ev.AssociationRef
    presentation_context_id: int
    transfer_syntax_uid: str
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    move_originator: ev.MoveOriginator | None
    operation: ev.Operation
    attempt: int
    labels: dict[str, str]
    requested_at: dt.datetime
    study_instance_uid: str | None = None
    patient_id: str | None = None

    def facts(self) -> dict[str, object]:
        """The request's fields, as both response events carry them."""
        return {
            "association": self.association,
            "presentation_context_id": self.presentation_context_id,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "message_id": self.message_id,
            "affected_sop_class_uid": self.affected_sop_class_uid,
            "affected_sop_instance_uid": self.affected_sop_instance_uid,
            "move_originator": self.move_originator,
            "operation": self.operation,
            "attempt": self.attempt,
            "labels": self.labels,
            "requested_at": self.requested_at,
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
        }


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """The parts of a C-STORE-RSP the event needs (PS3.7 9.3.1.2)."""

    status: int | None
    error_comment: str | None = None
    affected_sop_instance_uid: str | None = None


PatientIdPolicy = Literal["omit", "hash", "keep"]


def protect_patient_id(raw: str | None, policy: PatientIdPolicy, key: bytes) -> str | None:
    """The Patient ID as the PHI policy lets it leave the node.

    ``hash`` is an HMAC-SHA256 under the node's key (truncated to 128 bits): the
    same patient gets the same value, which cannot be reversed without the key.
    """
    if not raw or policy == "omit":
        return None
    if policy == "keep":
        return raw[:128]
    return "hmac-sha256:" + hmac.new(key, raw.encode(), hashlib.sha256).hexdigest()[:32]


def response_event(sent: SentStore, response: StoreResponse, stamp: Stamp) -> CloudEvent:
    """The event for a C-STORE-RSP joined to its request.

    A response without a Status cannot say whether the instance was stored, so
    it becomes a missing-response event rather than an invented status.
    """
    if response.status is None or not 0 <= response.status <= 0xFFFF:
        return missing_event(
            sent, "invalid_response", f"C-STORE-RSP Status is {response.status!r}", stamp
        )
    info = describe_status(response.status, Service.STORAGE)
    comment = response.error_comment
    if response.affected_sop_instance_uid not in (None, sent.affected_sop_instance_uid):
        mismatch = f"C-STORE-RSP names SOP instance {response.affected_sop_instance_uid}"
        comment = f"{comment}; {mismatch}" if comment else mismatch
    data = ev.CStoreResponseReceivedData.model_validate(
        {
            **sent.facts(),
            "status": response.status,
            "status_category": info.category.value,
            "error_comment": comment[:1024] if comment else None,
            "responded_at": stamp.time,
        }
    )
    return _envelope(ev.CStoreResponseReceived, data, sent.affected_sop_instance_uid, stamp)


def missing_event(sent: SentStore, reason: str, detail: str, stamp: Stamp) -> CloudEvent:
    """The event for a C-STORE-RQ whose response will never come."""
    data = ev.CStoreResponseMissingData.model_validate(
        {**sent.facts(), "reason": reason, "detail": detail[:1024], "detected_at": stamp.time}
    )
    return _envelope(ev.CStoreResponseMissing, data, sent.affected_sop_instance_uid, stamp)


def unsent_event(
    operation: ev.Operation,
    destination_ae_title: str,
    uids: list[str],
    attempt: int,
    originator: ev.MoveOriginator | None,
    labels: dict[str, str],
    reason: ev.UnsentReason,
    detail: str,
    stamp: Stamp,
) -> CloudEvent:
    """``dicom.cstore.unsent``: sub-operations that got no association to be sent on."""
    data = ev.CStoreUnsentData(
        operation=operation,
        destination_ae_title=destination_ae_title,
        sop_instance_uids=tuple(uids),
        attempt=attempt,
        move_originator=originator,
        labels=labels,
        reason=reason,
        detail=detail[:1024],
        at=stamp.time,
    )
    return _envelope(ev.CStoreUnsent, data, str(operation.id), stamp)


def unsent_reason(
    destination_known: bool, rejection: str | None, any_sent: bool, destination: str
) -> tuple[ev.UnsentReason, str]:
    """Why a C-MOVE's sub-operations were never requested, and the words for it."""
    if not destination_known:
        return "unknown_destination", f"{destination!r} is not among the node's destinations"
    if rejection == "rejected_permanent":
        return "rejected_permanent", f"{destination} rejected the association (permanent)"
    if rejection == "rejected_transient":
        return "rejected_transient", f"{destination} rejected the association (transient)"
    if any_sent:
        return "association_lost", "the sub-association ended before they were sent"
    return "unreachable", f"no association with {destination}"


def _envelope(model: type[CloudEvent], data: object, subject: str, stamp: Stamp) -> CloudEvent:
    return model.model_validate(
        {
            "id": stamp.id,
            "source": stamp.source,
            "time": stamp.time,
            "subject": subject,
            "data": data,
        }
    )


def association_event(
    kind: str, association: ev.AssociationRef, stamp: Stamp, **details: object
) -> CloudEvent:
    """``dicom.association.<kind>`` for established, rejected, released or aborted."""
    model: type[CloudEvent] = {  # type: ignore[assignment]
        "established": ev.AssociationEstablished,
        "rejected": ev.AssociationRejected,
        "released": ev.AssociationReleased,
        "aborted": ev.AssociationAborted,
    }[kind]
    data = {"association": association, "at": stamp.time, **details}
    return _envelope(model, data, str(association.id), stamp)


def retrieve_requested_event(
    model: type[CloudEvent], data: dict[str, object], stamp: Stamp
) -> CloudEvent:
    """``dicom.move.requested`` or ``dicom.get.requested``."""
    operation = data["operation"]
    assert isinstance(operation, ev.Operation)
    return _envelope(model, data, str(operation.id), stamp)


def retrieve_completed_event(
    model: type[CloudEvent], data: dict[str, object], status: int, stamp: Stamp
) -> CloudEvent:
    """``dicom.move.completed`` or ``dicom.get.completed`` from the final response."""
    info = describe_status(status, Service.QUERY_RETRIEVE)
    operation = data["operation"]
    assert isinstance(operation, ev.Operation)
    payload = {
        **data,
        "status": status,
        "status_category": info.category.value,
        "completed_at": stamp.time,
    }
    return _envelope(model, payload, str(operation.id), stamp)


def missing_reason(abort_source: str | None, waited: float, dimse_timeout: float) -> str:
    """Why a request got no response: ``abort_source`` is local, peer, network, or None.

    pynetdicom answers a DIMSE timeout by aborting the association itself, so a
    local abort after waiting that long is the timeout, not a decision to abort.
    """
    if abort_source is None:
        return "connection_lost"
    if abort_source == "local" and waited >= dimse_timeout * 0.95:
        return "dimse_timeout"
    return "aborted"
