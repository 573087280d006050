"""One frozen model per event type of the dimsebus contract (DESIGN.md).

Events are past-tense facts; the one command (``ResendSubOperations``) is
imperative. ``parse_event`` turns any message body into the right model.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self
from uuid import UUID

from pydantic import Field, TypeAdapter, model_validator

from dimsebus.schemas.dicom import UID, AETitle, MessageID, Port, PresentationContextID, StatusCode
from dimsebus.schemas.envelope import CloudEvent, Model, UtcDatetime
from dimsebus.schemas.limits import (
    MAX_FAILED_INSTANCES,
    MAX_INVALID_FIELDS,
    MAX_KEY_NAME_LENGTH,
    MAX_KEY_VALUE_LENGTH,
    MAX_KEYS,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_PRESENTATION_CONTEXTS,
    MAX_REASON_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_UIDS,
)
from dimsebus.schemas.status import Service, StatusCategory, describe_status

Role = Literal["requestor", "acceptor"]
OperationKind = Literal["store", "move", "get"]
ResponseCategory = Literal["success", "warning", "failure", "cancel"]
QueryLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
MoveOutcome = Literal[
    "in_progress",
    "completed",
    "completed_with_failures",
    "failed",
    "cancelled",
    "stalled",
    "retrying",
]
MissingReason = Literal[
    "aborted", "dimse_timeout", "connection_lost", "released", "send_failed", "invalid_response"
]

UnsentReason = Literal[
    "unreachable",
    "rejected_transient",
    "rejected_permanent",
    "association_lost",
    "unknown_destination",
    "not_found",
    "node_stopped",
]

LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-/]{1,63}$")]
Labels = Annotated[
    dict[LabelKey, Annotated[str, Field(max_length=MAX_LABEL_VALUE_LENGTH)]],
    Field(max_length=MAX_LABELS, description=f"at most {MAX_LABELS} labels"),
]
Host = Annotated[str, Field(min_length=1, max_length=253)]
Count = Annotated[int, Field(ge=0)]
Attempt = Annotated[int, Field(ge=1)]
Comment = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
Reason = Annotated[str, Field(max_length=MAX_REASON_LENGTH)]
NodeName = Annotated[str, Field(max_length=MAX_SOURCE_LENGTH)]
InstanceUIDs = Annotated[
    tuple[UID, ...],
    Field(
        min_length=1,
        max_length=MAX_UIDS,
        description=f"at most {MAX_UIDS} per event: more instances are more events",
    ),
]
IdentifierKeys = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_KEY_NAME_LENGTH)],
        Annotated[str, Field(max_length=MAX_KEY_VALUE_LENGTH)],
    ],
    Field(max_length=MAX_KEYS),
]
PatientId = Annotated[str, Field(min_length=1, max_length=128)]
NodeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$", max_length=64)]


def _check_category(status: int, category: str, service: Service) -> None:
    expected = describe_status(status, service).category
    if category != expected:
        raise ValueError(
            f"status_category {category!r} does not match status 0x{status:04X}, "
            f"which is {expected.value!r}"
        )


# -- parts shared by several events -------------------------------------------------


class AssociationRef(Model):
    """The network handle: one association of the node with a peer."""

    id: UUID
    role: Role
    local_ae_title: AETitle
    peer_ae_title: AETitle
    peer_host: Host
    peer_port: Port


class Operation(Model):
    """The node's job that a message belongs to: a send, a C-MOVE or a C-GET."""

    kind: OperationKind
    id: UUID


class MoveOriginator(Model):
    """Move Originator AE Title (0000,1030) and Message ID (0000,1031) of a C-STORE-RQ."""

    ae_title: AETitle
    message_id: MessageID


class PresentationContext(Model):
    """One negotiated presentation context (PS3.8 9.3.3.2)."""

    id: PresentationContextID
    abstract_syntax_uid: UID
    transfer_syntax_uid: UID | None
    accepted: bool


class SubOperationCounts(Model):
    """The Number of Remaining/Completed/Failed/Warning Sub-operations (PS3.7 C.4.2)."""

    remaining: Count | None = None
    completed: Count = 0
    failed: Count = 0
    warning: Count = 0


class FailedInstance(Model):
    """A SOP instance whose sub-operation has not (yet) succeeded."""

    sop_instance_uid: UID
    status: StatusCode | None
    reason: Comment
    attempts: Attempt
    next_attempt_at: UtcDatetime | None = None
    gave_up: Comment | None = None


class RemoteAE(Model):
    """A remote application entity the node opens an association to."""

    ae_title: AETitle
    host: Host
    port: Port
    tls: bool = False


# -- C-STORE ---------------------------------------------------------------------------


class CStoreRequestFacts(Model):
    """What the node knew when it sent the C-STORE-RQ."""

    association: AssociationRef
    presentation_context_id: PresentationContextID
    transfer_syntax_uid: UID
    message_id: MessageID
    affected_sop_class_uid: UID
    affected_sop_instance_uid: UID
    move_originator: MoveOriginator | None
    operation: Operation
    attempt: Attempt = 1
    labels: Labels = Field(default_factory=dict)
    requested_at: UtcDatetime
    study_instance_uid: UID | None = None
    patient_id: PatientId | None = Field(
        None,
        description="as the node's PHI policy lets it leave: absent (omit), "
        "'hmac-sha256:...' (hash, the default) or the Patient ID itself (keep)",
    )


class CStoreResponseReceivedData(CStoreRequestFacts):
    """A C-STORE-RSP and the request it answers (PS3.7 9.3.1.2)."""

    status: StatusCode
    status_category: ResponseCategory
    error_comment: Comment | None = None
    responded_at: UtcDatetime

    @model_validator(mode="after")
    def _status_matches_category(self) -> Self:
        _check_category(self.status, self.status_category, Service.STORAGE)
        return self


class CStoreResponseMissingData(CStoreRequestFacts):
    """A C-STORE-RQ that never got its response."""

    reason: MissingReason
    detail: Comment
    detected_at: UtcDatetime


class CStoreResponseReceived(CloudEvent):
    """A C-STORE-RSP arrived at the node (any role)."""

    type: Literal["dicom.cstore.response.received"] = "dicom.cstore.response.received"
    data: CStoreResponseReceivedData


class CStoreResponseMissing(CloudEvent):
    """A C-STORE-RQ got no response: abort, DIMSE timeout or connection lost."""

    type: Literal["dicom.cstore.response.missing"] = "dicom.cstore.response.missing"
    data: CStoreResponseMissingData

    @property
    def routing_key(self) -> str:
        """A missing response is a failure of the sub-operation."""
        return f"{self.type}.{StatusCategory.FAILURE.value}"


class CStoreUnsentData(Model):
    """C-STORE sub-operations the node could not even request: no association to send on."""

    operation: Operation
    destination_ae_title: AETitle
    sop_instance_uids: InstanceUIDs
    attempt: Attempt = 1
    move_originator: MoveOriginator | None = None
    labels: Labels = Field(default_factory=dict)
    reason: UnsentReason
    detail: Comment
    at: UtcDatetime
    source: RemoteAE | None = Field(
        None,
        description="the remote archive a re-issued C-MOVE (Move SCU) could not be asked to "
        "move these instances from; absent: the node sends them itself",
    )
    study_instance_uid: UID | None = Field(None, description="their study, with source")


class CStoreUnsent(CloudEvent):
    """The node could not send C-STORE-RQs: destination unreachable, rejected or unknown."""

    type: Literal["dicom.cstore.unsent"] = "dicom.cstore.unsent"
    data: CStoreUnsentData

    @property
    def routing_key(self) -> str:
        """Unsent sub-operations are failures."""
        return f"{self.type}.{StatusCategory.FAILURE.value}"


# -- what the contract cannot carry ----------------------------------------------------

MessageName = Annotated[str, Field(min_length=1, max_length=64)]
RawValue = Annotated[str, Field(max_length=1024)]


class MessageInvalidData(Model):
    """A message the node exchanged whose values no other event type can carry.

    ``fields`` are the raw command-set elements, each rendered with ``repr()``
    and truncated; ``error`` names the field and the value that was rejected.
    """

    message: MessageName = Field(description="e.g. 'C-STORE-RSP' or 'A-ASSOCIATE'")
    association_id: UUID | None = None
    message_id: MessageID | None = None
    affected_sop_instance_uid: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="as the message gave it, valid UID or not"
    )
    operation: Operation | None = None
    error: Annotated[str, Field(min_length=1, max_length=4096)]
    fields: Annotated[
        dict[Annotated[str, Field(max_length=64)], RawValue], Field(max_length=MAX_INVALID_FIELDS)
    ] = Field(default_factory=dict)
    count: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="how many messages alike this event stands for (e.g. unsolicited "
        "C-STORE-RSPs before the node aborted the association); absent: one",
    )
    at: UtcDatetime


class MessageInvalid(CloudEvent):
    """A DIMSE or ACSE message had values the contract rejects: recorded, not lost."""

    type: Literal["dicom.message.invalid"] = "dicom.message.invalid"
    data: MessageInvalidData


# -- associations ----------------------------------------------------------------------


class AssociationEstablishedData(Model):
    """An association of the node, and the contexts that were negotiated."""

    association: AssociationRef
    presentation_contexts: Annotated[
        tuple[PresentationContext, ...], Field(max_length=MAX_PRESENTATION_CONTEXTS)
    ] = ()
    max_pdu_length: Count | None = None
    at: UtcDatetime


class AssociationRejectedData(Model):
    """An A-ASSOCIATE-RJ, sent or received by the node (PS3.8 9.3.4)."""

    association: AssociationRef
    result: Literal["permanent", "transient"]
    source: Literal["service_user", "service_provider_acse", "service_provider_presentation"]
    reason: Annotated[int, Field(ge=0, le=255)]
    reason_text: Comment
    at: UtcDatetime


class AssociationEndedData(Model):
    """An association that was released or aborted."""

    association: AssociationRef
    at: UtcDatetime


class AssociationAbortedData(AssociationEndedData):
    """An A-ABORT or A-P-ABORT, or a lost connection."""

    source: Literal["local", "peer", "network"]
    reason: Comment


class AssociationEstablished(CloudEvent):
    """The node established an association, as requestor or acceptor."""

    type: Literal["dicom.association.established"] = "dicom.association.established"
    data: AssociationEstablishedData


class AssociationRejected(CloudEvent):
    """An association of the node was rejected."""

    type: Literal["dicom.association.rejected"] = "dicom.association.rejected"
    data: AssociationRejectedData


class AssociationReleased(CloudEvent):
    """An association of the node was released normally."""

    type: Literal["dicom.association.released"] = "dicom.association.released"
    data: AssociationEndedData


class AssociationAborted(CloudEvent):
    """An association of the node was aborted."""

    type: Literal["dicom.association.aborted"] = "dicom.association.aborted"
    data: AssociationAbortedData


# -- access control at the node's DICOM edge ------------------------------------------

AccessService = Literal["association", "echo", "store", "find", "move", "get"]
AccessReason = Literal[
    "called_ae_title_not_recognised",
    "calling_ae_title_not_recognised",
    "host_not_allowed",
    "service_not_allowed",
]


class AccessRefusedData(Model):
    """What a peer asked for that its configuration does not allow, and what it got.

    ``service`` is ``association`` for an A-ASSOCIATE-RQ the node rejected (PS3.8
    9.3.4), else the request refused with ``status`` 0x0124 (PS3.7 C.5.2).
    ``refused`` counts this association's refusals so far; the node aborts it after
    a few.
    """

    association: AssociationRef
    service: AccessService
    reason: AccessReason
    detail: Comment
    called_ae_title: Annotated[str, Field(max_length=64)] | None = Field(
        None, description="the called AE title the peer asked for, as it sent it"
    )
    message_id: MessageID | None = None
    affected_sop_class_uid: UID | None = None
    status: StatusCode | None = None
    refused: Annotated[int, Field(ge=1)] = 1
    suppressed: Count = Field(
        0, description="refusals from the same address not reported since the last event"
    )
    at: UtcDatetime


class AccessRefused(CloudEvent):
    """The node refused a peer an association or a request: a DICOM Security Alert."""

    type: Literal["dicom.access.refused"] = "dicom.access.refused"
    data: AccessRefusedData


# -- C-MOVE and C-GET served by the node ---------------------------------------------


class RetrieveRequestedData(Model):
    """A C-MOVE-RQ or C-GET-RQ that the node received as SCP."""

    association: AssociationRef
    message_id: MessageID
    operation: Operation
    affected_sop_class_uid: UID
    query_level: QueryLevel
    keys: IdentifierKeys = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=0, le=2)] = 0
    requested_at: UtcDatetime


class MoveRequestedData(RetrieveRequestedData):
    """A C-MOVE-RQ, with the Move Destination (0000,0600)."""

    move_destination: AETitle


class RetrieveCompletedData(Model):
    """The final C-MOVE-RSP or C-GET-RSP that the node sent (PS3.4 C.4.2.1.5)."""

    association: AssociationRef
    message_id: MessageID
    operation: Operation
    status: StatusCode
    status_category: ResponseCategory
    error_comment: Comment | None = None
    counts: SubOperationCounts
    failed_sop_instance_uids: Annotated[
        tuple[UID, ...],
        Field(
            max_length=MAX_UIDS,
            description=f"the first {MAX_UIDS} the final response listed",
        ),
    ] = ()
    failed_sop_instance_uids_omitted: Count = Field(
        0, description="how many more failed instances the final response listed"
    )
    completed_at: UtcDatetime

    @model_validator(mode="after")
    def _status_matches_category(self) -> Self:
        _check_category(self.status, self.status_category, Service.QUERY_RETRIEVE)
        return self


class MoveCompletedData(RetrieveCompletedData):
    """The final C-MOVE-RSP, with the destination the sub-operations went to."""

    move_destination: AETitle


class MoveRequested(CloudEvent):
    """The node, as Move SCP, received a C-MOVE-RQ."""

    type: Literal["dicom.move.requested"] = "dicom.move.requested"
    data: MoveRequestedData


class MoveCompleted(CloudEvent):
    """The node, as Move SCP, sent its final C-MOVE-RSP."""

    type: Literal["dicom.move.completed"] = "dicom.move.completed"
    data: MoveCompletedData


class MoveInterruptedData(Model):
    """A C-MOVE the node stopped serving (crash, kill) before its final C-MOVE-RSP.

    Found when the node starts again: ``unanswered`` are the matched instances
    whose sub-operation got no response event before the stop.
    """

    association: AssociationRef
    message_id: MessageID
    operation: Operation
    move_destination: AETitle
    matched: Count
    unanswered: Count
    detail: Comment
    interrupted_at: UtcDatetime


class MoveInterrupted(CloudEvent):
    """The node stopped in the middle of a C-MOVE; it never sent the final C-MOVE-RSP."""

    type: Literal["dicom.move.interrupted"] = "dicom.move.interrupted"
    data: MoveInterruptedData


class GetRequested(CloudEvent):
    """The node, as Get SCP, received a C-GET-RQ."""

    type: Literal["dicom.get.requested"] = "dicom.get.requested"
    data: RetrieveRequestedData


class GetCompleted(CloudEvent):
    """The node, as Get SCP, sent its final C-GET-RSP."""

    type: Literal["dicom.get.completed"] = "dicom.get.completed"
    data: RetrieveCompletedData


# -- C-MOVE requested by the node (Move SCU) -----------------------------------------

MoveLevel = Literal["STUDY", "SERIES", "IMAGE"]
UIDList = Annotated[tuple[UID, ...], Field(max_length=MAX_UIDS)]


class MoveCommandData(Model):
    """What the node must ask a remote archive to move, and where (PS3.4 C.4.2, Study Root).

    STUDY level names the study; SERIES level its series; IMAGE level its instances
    (with their series where the archive needs it: at most one).
    """

    operation: Operation
    node_id: NodeId
    source: RemoteAE
    destination_ae_title: AETitle
    query_level: MoveLevel
    study_instance_uid: UID
    series_instance_uids: UIDList | None = None
    sop_instance_uids: UIDList | None = None
    attempt: Attempt = 1
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="after")
    def _level_matches_keys(self) -> Self:
        if self.operation.kind != "move":
            raise ValueError(f"operation.kind must be 'move', not {self.operation.kind!r}")
        series, instances = self.series_instance_uids or (), self.sop_instance_uids or ()
        if self.query_level == "STUDY" and (series or instances):
            raise ValueError("query_level STUDY takes no series_instance_uids or sop_instance_uids")
        if self.query_level == "SERIES" and (not series or instances):
            raise ValueError("query_level SERIES needs series_instance_uids and no instances")
        if self.query_level == "IMAGE" and (not instances or len(series) > 1):
            raise ValueError("query_level IMAGE needs sop_instance_uids and at most one series")
        return self


class MoveResponseData(Model):
    """A C-MOVE-RSP the node received as Move SCU (PS3.7 9.3.4.2, PS3.4 C.4.2.1.5).

    Pending responses carry the sub-operation counts so far; the final one
    (``final``) also the Failed SOP Instance UID List, capped as ``dimsebus.schemas.limits`` says.
    """

    association: AssociationRef
    message_id: MessageID = Field(description="the C-MOVE-RQ's Message ID")
    operation: Operation
    move_destination: AETitle
    attempt: Attempt = 1
    final: bool
    status: StatusCode
    status_category: Literal["success", "warning", "failure", "cancel", "pending"]
    error_comment: Comment | None = None
    counts: SubOperationCounts
    failed_sop_instance_uids: Annotated[
        tuple[UID, ...],
        Field(max_length=MAX_UIDS, description=f"the first {MAX_UIDS} the final response listed"),
    ] = ()
    failed_sop_instance_uids_omitted: Count = Field(
        0, description="how many more failed instances the final response listed"
    )
    labels: Labels = Field(default_factory=dict)
    responded_at: UtcDatetime
    source: RemoteAE | None = Field(
        None, description="the archive asked to move, as the move command named it"
    )
    study_instance_uid: UID | None = Field(None, description="the study the move command named")
    sop_instance_uids: UIDList | None = Field(
        None,
        description="the instances the C-MOVE-RQ asked for (IMAGE level), as the command "
        "named them; absent at STUDY and SERIES level",
    )

    @model_validator(mode="after")
    def _status_matches_category(self) -> Self:
        _check_category(self.status, self.status_category, Service.QUERY_RETRIEVE)
        return self

    def instance_outcomes(self) -> dict[str, Literal["success", "warning", "failure"]]:
        """What a final response says of each instance it was asked for (IMAGE level).

        The listed ones failed. The archive counts the others without naming them:
        the first ``completed`` of them (by UID) are counted completed, the next
        ``warning`` warning, and any left over failed (counted failed but not listed,
        or not matched at all). Empty for a pending response or one of a C-MOVE that
        named no instances (PS3.4 C.4.2.1.5: the counts are all it says of them).
        """
        if not self.final or not self.sop_instance_uids:
            return {}
        listed = set(self.failed_sop_instance_uids)
        others = sorted(set(self.sop_instance_uids) - listed)
        done = self.counts.completed
        named: dict[str, Literal["success", "warning", "failure"]] = dict.fromkeys(
            listed & set(self.sop_instance_uids), "failure"
        )
        for index, uid in enumerate(others):
            if index < done:
                named[uid] = "success"
            elif index < done + self.counts.warning:
                named[uid] = "warning"
            else:
                named[uid] = "failure"
        return named


class MoveResponseReceived(CloudEvent):
    """A C-MOVE-RSP arrived at the node, which asked a remote archive to move."""

    type: Literal["dicom.move.response.received"] = "dicom.move.response.received"
    data: MoveResponseData


class CStoreResponseSent(CloudEvent):
    """The node answered a C-STORE-RQ of a C-MOVE it requested (it was the destination)."""

    type: Literal["dicom.cstore.response.sent"] = "dicom.cstore.response.sent"
    data: CStoreResponseReceivedData


# -- derived by the tracker and the retrier ------------------------------------------


class MoveProgressData(Model):
    """The tracker's view of one C-MOVE."""

    operation: Operation
    node_id: NodeName
    requestor_ae_title: AETitle | None
    destination_ae_title: AETitle | None
    expected: Count | None
    counts: SubOperationCounts
    outcome: MoveOutcome
    failed_instances: Annotated[
        tuple[FailedInstance, ...],
        Field(
            max_length=MAX_FAILED_INSTANCES,
            description=f"the first {MAX_FAILED_INSTANCES} by SOP Instance UID",
        ),
    ] = ()
    failed_instances_omitted: Count = Field(
        0, description="failed instances not listed; the tracker's API lists them all"
    )
    at: UtcDatetime
    reason: Comment | None = Field(
        None, description="why the move failed as a whole (outcome failed), else absent"
    )


class MoveFinishedData(MoveProgressData):
    """The tracker's view of a C-MOVE whose outcome is final, numbered by revision."""

    revision: Attempt = Field(
        1,
        description="1 for the move's first final outcome; one more each time the move "
        "changes after it finished (a manual retry, a requeued parked item). A redelivery "
        "repeats the same id and revision.",
    )


class MoveProgressed(CloudEvent):
    """The tracker folded new sub-operation results into a move."""

    type: Literal["dimsebus.move.progressed"] = "dimsebus.move.progressed"
    data: MoveProgressData


class MoveFinished(CloudEvent):
    """The tracker decided a move's outcome."""

    type: Literal["dimsebus.move.finished"] = "dimsebus.move.finished"
    data: MoveFinishedData


class RetryData(Model):
    """A retrier decision about the failed sub-operations of one operation."""

    operation: Operation
    node_id: NodeName
    sop_instance_uids: InstanceUIDs
    attempt: Attempt
    reason: Reason
    retry_at: UtcDatetime | None = None
    status: StatusCode | None = None
    destination_ae_title: AETitle | None = None


class RetryScheduled(CloudEvent):
    """The retrier will re-send failed sub-operations at ``retry_at``."""

    type: Literal["dimsebus.retry.scheduled"] = "dimsebus.retry.scheduled"
    data: RetryData


class RetryExhausted(CloudEvent):
    """The retrier gave up on failed sub-operations; they are parked."""

    type: Literal["dimsebus.retry.exhausted"] = "dimsebus.retry.exhausted"
    data: RetryData


# -- recorded for people ----------------------------------------------------------------

ActionName = Literal["retry", "requeue"]


class ActionRequestedData(Model):
    """What a person asked for on the tracker's web page, about one move, and from where."""

    action: ActionName = Field(
        description="retry: the tracker re-sent the move's failed instances (as `dimsebus "
        "moves retry` does); requeue: the retrier sends its parked items of the move again "
        "(as `dimsebus retries requeue` does)"
    )
    operation: Operation
    node_id: NodeId
    instances: Count | None = Field(
        None, description="instances the tracker asked to re-send (retry), else absent"
    )
    remote_address: Host = Field(description="the address the request came from")
    session: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$", max_length=16)] = Field(
        description="a non-secret id of the signed-in session that asked (never the token)"
    )
    at: UtcDatetime


class ActionRequested(CloudEvent):
    """A person signed in to the tracker's web page asked for an action on a move."""

    type: Literal["dimsebus.action.requested"] = "dimsebus.action.requested"
    data: ActionRequestedData

    @property
    def routing_key(self) -> str:
        """``type`` and the action: the retrier's queue is bound to the requeues alone."""
        return f"{self.type}.{self.data.action}"


# -- commands --------------------------------------------------------------------------


class ResendData(Model):
    """Which instances the node must send again, and where.

    With ``source``, the instances were pulled from a remote archive (the node's
    C-MOVE as Move SCU): the node asks that archive again, by a C-MOVE at IMAGE
    level of exactly these instances of ``study_instance_uid``, instead of
    sending them from its own archive.
    """

    operation: Operation
    node_id: NodeId
    sop_instance_uids: InstanceUIDs
    destination_ae_title: AETitle
    move_originator: MoveOriginator | None
    attempt: Attempt
    labels: Labels = Field(default_factory=dict)
    source: RemoteAE | None = Field(
        None,
        description="the remote archive to C-MOVE the instances from again (a move the "
        "node requested as Move SCU); absent: the node sends them itself",
    )
    study_instance_uid: UID | None = Field(
        None, description="the instances' study, which a C-MOVE from source names"
    )

    @model_validator(mode="after")
    def _pull_names_its_study(self) -> Self:
        if self.source is not None:
            if self.operation.kind != "move":
                raise ValueError(f"source: a {self.operation.kind} is not re-issued as a C-MOVE")
            if self.study_instance_uid is None:
                raise ValueError("study_instance_uid: a C-MOVE from source names the study")
        return self


class ResendSubOperations(CloudEvent):
    """Command to a node: re-send these SOP instances (routed by node id)."""

    type: Literal["dimsebus.command.resend"] = "dimsebus.command.resend"
    data: ResendData

    @property
    def routing_key(self) -> str:
        """Commands are routed by node id (DESIGN.md, ``dimsebus.commands``)."""
        return f"{self.type}.{self.data.node_id}"


class MoveCommand(CloudEvent):
    """Command to a node: ask a remote archive to C-MOVE (routed by node id)."""

    type: Literal["dimsebus.command.move"] = "dimsebus.command.move"
    data: MoveCommandData

    @property
    def routing_key(self) -> str:
        """Commands are routed by node id (DESIGN.md, ``dimsebus.commands``)."""
        return f"{self.type}.{self.data.node_id}"


EVENT_MODELS: tuple[type[CloudEvent], ...] = (
    CStoreResponseReceived,
    CStoreResponseMissing,
    CStoreUnsent,
    MessageInvalid,
    AssociationEstablished,
    AssociationRejected,
    AssociationReleased,
    AssociationAborted,
    AccessRefused,
    MoveRequested,
    MoveCompleted,
    MoveInterrupted,
    GetRequested,
    GetCompleted,
    MoveProgressed,
    MoveFinished,
    RetryScheduled,
    RetryExhausted,
    MoveResponseReceived,
    CStoreResponseSent,
    ActionRequested,
)
COMMAND_MODELS: tuple[type[CloudEvent], ...] = (ResendSubOperations, MoveCommand)

Event = Annotated[
    CStoreResponseReceived
    | CStoreResponseMissing
    | CStoreUnsent
    | MessageInvalid
    | AssociationEstablished
    | AssociationRejected
    | AssociationReleased
    | AssociationAborted
    | AccessRefused
    | MoveRequested
    | MoveCompleted
    | MoveInterrupted
    | GetRequested
    | GetCompleted
    | MoveProgressed
    | MoveFinished
    | RetryScheduled
    | RetryExhausted
    | ResendSubOperations
    | MoveResponseReceived
    | CStoreResponseSent
    | MoveCommand
    | ActionRequested,
    Field(discriminator="type"),
]

MESSAGE_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
TYPES: dict[str, type[CloudEvent]] = {
    model.model_fields["type"].default: model for model in (*EVENT_MODELS, *COMMAND_MODELS)
}


def parse_event(body: bytes | str) -> Event:
    """Validate a structured CloudEvents JSON body into its event model."""
    return MESSAGE_ADAPTER.validate_json(body)
