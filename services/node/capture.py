"""Pure capture: what the node sent and what came back, turned into contract events.

The shell (``dimsebus.services.node.pairing``) records each C-STORE-RQ it sends as a
``SentStore``, joins the C-STORE-RSP to it by (association, message id), and
calls these functions. Nothing here touches a socket, a clock or a random
source: ids and times come in as arguments. Nothing here raises on what a
peer sent either: values the contract rejects become ``dicom.message.invalid``
(``dimsebus.services.node.salvage``) rather than an exception that loses the event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from uuid import UUID

from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.node.salvage import (
    comment_text,
    describe_error,
    invalid_event,
    invalid_facts,
    invalid_of,
    rendered,
    shown,
    status_problem,
    text,
)
from dimsebus.services.node.stamp import Stamp as Stamp  # re-exported: its callers' one import

E = TypeVar("E", bound=CloudEvent)


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
    """A C-STORE-RSP (PS3.7 9.3.1.2) with its values as they came off the wire.

    A value may be anything the decoder made of the peer's bytes: None, a list
    for a multi-valued element, a number out of range, or ``Unreadable``.
    ``command`` is the whole command set, keyword to value.
    """

    status: object
    error_comment: object = None
    affected_sop_instance_uid: object = None
    message_id: object = None
    command: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, command: Mapping[str, object]) -> StoreResponse:
        """The response in a command set read as keyword to value."""
        return cls(
            status=command.get("Status"),
            error_comment=command.get("ErrorComment"),
            affected_sop_instance_uid=command.get("AffectedSOPInstanceUID"),
            message_id=command.get("MessageIDBeingRespondedTo"),
            command=command,
        )


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


def answer_event(
    sent: SentStore | None, response: StoreResponse, association_id: UUID, stamp: Stamp
) -> CloudEvent:
    """The one event for a C-STORE-RSP, ``sent`` being the request it answers, if any."""
    if sent is None:
        return unmatched_event(response, association_id, stamp)
    return response_event(sent, response, stamp)


@dataclass(frozen=True, slots=True)
class AnswerFacts:
    """A C-STORE-RSP as its event uses it, each peer value made text where it is not plain.

    Plain values only, so that a shell can spool them and its relay make the event
    (``dimsebus.services.node.facts``): ``answer_facts`` makes them, ``answer_of`` the event.
    """

    status: int | None
    status_problem: str | None
    error_comment: str | None
    named_instance: str | None
    fields: dict[str, str]


def answer_facts(response: StoreResponse) -> AnswerFacts:
    """What the event of ``response`` needs of it, as plain values; never raises."""
    problem = status_problem(response.status)
    named = response.affected_sop_instance_uid
    comment = comment_text(response.error_comment)
    return AnswerFacts(
        status=response.status if problem is None else None,  # type: ignore[arg-type]
        status_problem=problem,
        # cut and escaped as the event has it (a lone surrogate cannot be spooled as JSON)
        error_comment=text(comment, 1024) if comment is not None else None,
        named_instance=None if named in (None, "") else shown(named, 200),
        fields=rendered(response.command),
    )


def response_event(sent: SentStore, response: StoreResponse, stamp: Stamp) -> CloudEvent:
    """The one event for a C-STORE-RSP joined to its request; never raises."""
    return answer_of(sent, answer_facts(response), stamp)


def answer_of(sent: SentStore, answer: AnswerFacts, stamp: Stamp) -> CloudEvent:
    """The one event for a C-STORE-RSP (its ``answer_facts``) joined to its request.

    A response whose Status is absent, unreadable or not 0 to 0xFFFF cannot say
    whether the instance was stored, so it becomes a missing-response event
    (``invalid_response``) rather than an invented status; request facts the
    contract rejects make it ``dicom.message.invalid`` (see ``missing_event``).
    """
    problem = answer.status_problem
    if answer.status is not None and problem is None:
        try:
            return _received_event(sent, answer, answer.status, stamp)
        except ValidationError as exc:
            problem = describe_error(exc)
    detail = problem or "C-STORE-RSP Status is None"
    return _missing(sent, "invalid_response", detail, stamp, answer.fields)


def missing_event(
    sent: SentStore,
    reason: str,
    detail: str,
    stamp: Stamp,
    response: StoreResponse | None = None,
) -> CloudEvent:
    """The event for a C-STORE-RQ whose response will never come (or cannot be used).

    If the request's own facts are invalid (a SOP Instance UID with a leading
    zero in the file that was sent, say), it is ``dicom.message.invalid``.
    """
    fields = rendered(response.command) if response is not None else None
    return _missing(sent, reason, detail, stamp, fields)


def _missing(
    sent: SentStore, reason: str, detail: str, stamp: Stamp, answered: dict[str, str] | None
) -> CloudEvent:
    """``missing_event``; ``answered`` is the response's command set, rendered, if one came."""
    try:
        data = ev.CStoreResponseMissingData.model_validate(
            {
                **sent.facts(),
                "reason": reason,
                "detail": text(detail, 1024),
                "detected_at": stamp.time,
            }
        )
    except ValidationError as exc:
        error = describe_error(exc)
        return _invalid_exchange(
            sent, answered, error if error in detail else f"{error}; {detail}", stamp
        )
    return envelope(ev.CStoreResponseMissing, data, sent.affected_sop_instance_uid, stamp)


def unmatched_event(response: StoreResponse, association_id: UUID, stamp: Stamp) -> CloudEvent:
    """``dicom.message.invalid`` for a C-STORE-RSP that answers no outstanding request."""
    return invalid_event(
        "C-STORE-RSP",
        f"MessageIDBeingRespondedTo {shown(response.message_id, 200)} answers no "
        "C-STORE-RQ outstanding on this association",
        stamp,
        association_id=association_id,
        message_id=response.message_id,
        sop_instance_uid=response.affected_sop_instance_uid,
        fields=response.command,
    )


def _received_event(sent: SentStore, answer: AnswerFacts, status: int, stamp: Stamp) -> CloudEvent:
    info = describe_status(status, Service.STORAGE)
    comment = answer.error_comment
    named = answer.named_instance
    if named is not None and named != sent.affected_sop_instance_uid:
        mismatch = f"C-STORE-RSP names SOP instance {named}"
        comment = f"{comment}; {mismatch}" if comment else mismatch
    data = ev.CStoreResponseReceivedData.model_validate(
        {
            **sent.facts(),
            "status": status,
            "status_category": info.category.value,
            "error_comment": text(comment, 1024) if comment else None,
            "responded_at": stamp.time,
        }
    )
    return envelope(ev.CStoreResponseReceived, data, sent.affected_sop_instance_uid, stamp)


def _invalid_exchange(
    sent: SentStore, answered: dict[str, str] | None, error: str, stamp: Stamp
) -> CloudEvent:
    facts = invalid_facts(
        "C-STORE-RSP" if answered is not None else "C-STORE-RQ",
        error,
        association_id=sent.association.id,
        message_id=sent.message_id,
        sop_instance_uid=sent.affected_sop_instance_uid,
        operation=sent.operation,
        fields=sent.facts() if answered is None else None,
    )
    if answered is not None:
        facts = dataclasses.replace(facts, fields=answered)
    return invalid_of(facts, stamp)


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
    return envelope(ev.CStoreUnsent, data, str(operation.id), stamp)


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


def envelope(model: type[E], data: object, subject: str, stamp: Stamp) -> E:
    """An event of ``model``: ``data`` under the envelope of ``stamp``, about ``subject``."""
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
    return envelope(model, data, str(association.id), stamp)


def access_refused_event(
    association: ev.AssociationRef, stamp: Stamp, **details: object
) -> CloudEvent:
    """``dicom.access.refused``: an association or request the node's access control refused."""
    data = {"association": association, "at": stamp.time, **details}
    return envelope(ev.AccessRefused, data, str(association.id), stamp)


def retrieve_requested_event(
    model: type[CloudEvent], data: dict[str, object], stamp: Stamp
) -> CloudEvent:
    """``dicom.move.requested`` or ``dicom.get.requested``."""
    operation = data["operation"]
    assert isinstance(operation, ev.Operation)
    return envelope(model, data, str(operation.id), stamp)


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
    return envelope(model, payload, str(operation.id), stamp)


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
