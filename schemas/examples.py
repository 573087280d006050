"""A worked example of the contract: one small C-MOVE told as events, every type once or more.

Pure: ids and the start time come in. Used as AsyncAPI examples, as test
fixtures, and by the demo until the node produces the real thing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.status import Service, describe_status

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def sequential_ids(start: int = 1) -> Iterator[UUID]:
    """Deterministic ids for examples and tests."""
    number = start
    while True:
        yield UUID(int=number)
        number += 1


class _Story:
    def __init__(self, node_id: str, start: dt.datetime, ids: Iterator[UUID]) -> None:
        self.source = f"dimsebus://node/{node_id}"
        self.node_id = node_id
        self.clock = start
        self.ids = ids
        self.events: list[CloudEvent] = []

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(milliseconds=7)
        return self.clock

    def add(self, model: type[CloudEvent], subject: str, data: Any) -> None:
        envelope = {"id": next(self.ids), "source": self.source, "time": self.tick()}
        self.events.append(model.model_validate({**envelope, "subject": subject, "data": data}))

    def association(self, role: ev.Role, peer: str, port: int) -> ev.AssociationRef:
        return ev.AssociationRef(
            id=next(self.ids),
            role=role,
            local_ae_title="DIMSEBUS",
            peer_ae_title=peer,
            peer_host="127.0.0.1",
            peer_port=port,
        )


def move_story(
    *, node_id: str, start: dt.datetime, ids: Iterator[UUID], instances: int = 5
) -> list[CloudEvent]:
    """MOVESCU moves a study of ``instances`` CT images to STORESCP; two sub-operations fail."""
    story = _Story(node_id, start, ids)
    move = ev.Operation(kind="move", id=next(ids))
    requestor = story.association("acceptor", "MOVESCU", 51234)
    story.add(
        ev.AssociationEstablished, str(requestor.id), {"association": requestor, "at": story.clock}
    )
    story.add(
        ev.MoveRequested,
        str(move.id),
        ev.MoveRequestedData(
            association=requestor,
            message_id=1,
            operation=move,
            affected_sop_class_uid=STUDY_ROOT_MOVE,
            query_level="STUDY",
            keys={"StudyInstanceUID": STUDY_UID},
            move_destination="STORESCP",
            requested_at=story.clock,
        ),
    )
    destination = story.association("requestor", "STORESCP", 11112)
    story.add(
        ev.AssociationEstablished, str(destination.id), _established(destination, story.clock)
    )
    originator = ev.MoveOriginator(ae_title="MOVESCU", message_id=1)
    uids = [f"{STUDY_UID}.1.{number}" for number in range(1, instances + 1)]
    for message_id, uid in enumerate(uids[:-1], start=1):
        status = 0xA700 if message_id == 2 else 0x0000
        request = _request(destination, message_id, uid, originator, move, story.clock)
        story.add(
            ev.CStoreResponseReceived,
            uid,
            ev.CStoreResponseReceivedData(
                **request,
                status=status,
                status_category=describe_status(status, Service.STORAGE).category.value,  # type: ignore[arg-type]
                responded_at=story.tick(),
            ),
        )
    missing = _request(destination, len(uids), uids[-1], originator, move, story.clock)
    story.add(
        ev.CStoreResponseMissing,
        uids[-1],
        ev.CStoreResponseMissingData(
            **missing, reason="aborted", detail="peer sent A-ABORT", detected_at=story.tick()
        ),
    )
    story.add(
        ev.AssociationAborted,
        str(destination.id),
        ev.AssociationAbortedData(
            association=destination, at=story.clock, source="peer", reason="A-ABORT"
        ),
    )
    failed = (uids[1], uids[-1])
    counts = ev.SubOperationCounts(remaining=0, completed=instances - 2, failed=2, warning=0)
    story.add(
        ev.MoveCompleted,
        str(move.id),
        ev.MoveCompletedData(
            association=requestor,
            message_id=1,
            operation=move,
            status=0xB000,
            status_category="warning",
            counts=counts,
            failed_sop_instance_uids=failed,
            move_destination="STORESCP",
            completed_at=story.clock,
        ),
    )
    story.add(
        ev.AssociationReleased, str(requestor.id), {"association": requestor, "at": story.tick()}
    )
    _derived(story, move, counts, failed, instances)
    _get_and_reject(story)
    return story.events


def every_event(node_id: str, start: dt.datetime, ids: Iterator[UUID]) -> list[CloudEvent]:
    """One example (at least) of every type: ``move_story``, then a move a crash cut off."""
    events = move_story(node_id=node_id, start=start, ids=ids)
    story = _Story(node_id, events[-1].time, ids)
    _interrupted(story)
    _pulled(story)
    _acted(story)
    return [*events, *story.events]


def _established(association: ev.AssociationRef, at: dt.datetime) -> ev.AssociationEstablishedData:
    context = ev.PresentationContext(
        id=1,
        abstract_syntax_uid=CT_IMAGE_STORAGE,
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN,
        accepted=True,
    )
    return ev.AssociationEstablishedData(
        association=association, presentation_contexts=(context,), max_pdu_length=16382, at=at
    )


def _request(
    association: ev.AssociationRef,
    message_id: int,
    uid: str,
    originator: ev.MoveOriginator | None,
    operation: ev.Operation,
    at: dt.datetime,
) -> dict[str, Any]:
    return {
        "association": association,
        "presentation_context_id": 1,
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
        "message_id": message_id,
        "affected_sop_class_uid": CT_IMAGE_STORAGE,
        "affected_sop_instance_uid": uid,
        "move_originator": originator,
        "operation": operation,
        "labels": {"site": "example"},
        "requested_at": at,
    }


def _derived(
    story: _Story,
    move: ev.Operation,
    counts: ev.SubOperationCounts,
    failed: tuple[str, str],
    instances: int,
) -> None:
    failures = (
        ev.FailedInstance(
            sop_instance_uid=failed[0],
            status=0xA700,
            reason="Refused: Out of Resources",
            attempts=1,
        ),
        ev.FailedInstance(
            sop_instance_uid=failed[1], status=None, reason="response missing: aborted", attempts=1
        ),
    )
    progress: dict[str, Any] = {
        "operation": move,
        "node_id": story.node_id,
        "requestor_ae_title": "MOVESCU",
        "destination_ae_title": "STORESCP",
        "expected": instances,
        "counts": counts,
        "failed_instances": failures,
    }
    story.add(
        ev.MoveProgressed, str(move.id), {**progress, "outcome": "in_progress", "at": story.tick()}
    )
    story.add(
        ev.MoveFinished,
        str(move.id),
        {**progress, "outcome": "completed_with_failures", "at": story.tick()},
    )
    send = ev.Operation(kind="store", id=next(story.ids))
    story.add(
        ev.CStoreUnsent,
        str(send.id),
        {
            "operation": send,
            "destination_ae_title": "PACS",
            "sop_instance_uids": failed[:1],
            "attempt": 2,
            "reason": "unreachable",
            "detail": "connection refused by 127.0.0.1:11113",
            "at": story.tick(),
        },
    )
    retry: dict[str, Any] = {"operation": move, "node_id": story.node_id, "attempt": 2}
    story.add(
        ev.RetryScheduled,
        str(move.id),
        {
            **retry,
            "sop_instance_uids": failed,
            "reason": "transient failure",
            "retry_at": story.clock + dt.timedelta(seconds=30),
        },
    )
    story.add(
        ev.ResendSubOperations,
        str(move.id),
        {
            **retry,
            "sop_instance_uids": failed,
            "destination_ae_title": "STORESCP",
            "move_originator": {"ae_title": "MOVESCU", "message_id": 1},
        },
    )
    story.add(
        ev.RetryExhausted,
        str(move.id),
        {
            **retry,
            "sop_instance_uids": failed,
            "reason": "2 of 2 attempts failed; last: 0xA700 Refused: Out of Resources",
        },
    )


def _get_and_reject(story: _Story) -> None:
    get = ev.Operation(kind="get", id=next(story.ids))
    requestor = story.association("acceptor", "GETSCU", 51300)
    story.add(
        ev.GetRequested,
        str(get.id),
        ev.RetrieveRequestedData(
            association=requestor,
            message_id=7,
            operation=get,
            affected_sop_class_uid=STUDY_ROOT_GET,
            query_level="STUDY",
            keys={"StudyInstanceUID": STUDY_UID},
            requested_at=story.tick(),
        ),
    )
    story.add(
        ev.GetCompleted,
        str(get.id),
        ev.RetrieveCompletedData(
            association=requestor,
            message_id=7,
            operation=get,
            status=0x0000,
            status_category="success",
            counts=ev.SubOperationCounts(remaining=0, completed=1),
            completed_at=story.tick(),
        ),
    )
    story.add(
        ev.MessageInvalid,
        str(requestor.id),
        ev.MessageInvalidData(
            message="C-STORE-RSP",
            association_id=requestor.id,
            message_id=9,
            error="MessageIDBeingRespondedTo 9 answers no C-STORE-RQ outstanding on this "
            "association",
            fields={"CommandField": "32769", "MessageIDBeingRespondedTo": "9", "Status": "0"},
            at=story.tick(),
        ),
    )
    intruder = story.association("acceptor", "INTRUDER", 51400)
    story.add(
        ev.AssociationRejected,
        str(intruder.id),
        ev.AssociationRejectedData(
            association=intruder,
            result="permanent",
            source="service_user",
            reason=3,
            reason_text="Calling AE title not recognized",
            at=story.tick(),
        ),
    )
    story.add(
        ev.AccessRefused,
        str(intruder.id),
        ev.AccessRefusedData(
            association=intruder,
            service="association",
            reason="calling_ae_title_not_recognised",
            detail="calling AE title 'INTRUDER' is not a configured peer",
            called_ae_title="DIMSEBUS",
            at=story.tick(),
        ),
    )
    prober = story.association("acceptor", "PROBER", 51450)
    story.add(
        ev.AccessRefused,
        str(prober.id),
        ev.AccessRefusedData(
            association=prober,
            service="find",
            reason="service_not_allowed",
            detail="PROBER may not use FIND",
            message_id=1,
            affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
            status=0x0124,
            at=story.tick(),
        ),
    )


def _interrupted(story: _Story) -> None:
    """A second C-MOVE that the node's crash cut off, as reported when it started again."""
    move = ev.Operation(kind="move", id=next(story.ids))
    requestor = story.association("acceptor", "MOVESCU", 51500)
    story.add(
        ev.MoveInterrupted,
        str(move.id),
        ev.MoveInterruptedData(
            association=requestor,
            message_id=9,
            operation=move,
            move_destination="STORESCP",
            matched=3,
            unanswered=1,
            detail="the node stopped before the final C-MOVE-RSP; 1 of 3 sub-operations "
            "got no response",
            interrupted_at=story.tick(),
        ),
    )


def _pulled(story: _Story) -> None:
    """A C-MOVE the node asked a remote archive for, with itself as the destination."""
    move = ev.Operation(kind="move", id=next(story.ids))
    study, series = f"{STUDY_UID}.7", f"{STUDY_UID}.7.1"
    instances = (f"{series}.1", f"{series}.2")
    command: dict[str, Any] = {
        "operation": move,
        "node_id": story.node_id,
        "source": {"ae_title": "PACS", "host": "pacs.example.org", "port": 104},
        "destination_ae_title": "DIMSEBUS",
        "query_level": "SERIES",
        "study_instance_uid": study,
        "series_instance_uids": (series,),
        "labels": {"job": "ai-triage"},
    }
    story.add(ev.MoveCommand, str(move.id), command)
    to_archive = story.association("requestor", "PACS", 104)
    from_archive = story.association("acceptor", "PACS", 51600)
    response: dict[str, Any] = {
        "association": to_archive,
        "message_id": 3,
        "operation": move,
        "move_destination": "DIMSEBUS",
        "labels": {"job": "ai-triage"},
    }
    requested = story.tick()
    story.add(
        ev.CStoreResponseSent,
        instances[0],
        {
            "association": from_archive,
            "presentation_context_id": 1,
            "transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
            "message_id": 1,
            "affected_sop_class_uid": CT_IMAGE_STORAGE,
            "affected_sop_instance_uid": instances[0],
            "move_originator": {"ae_title": "DIMSEBUS", "message_id": 3},
            "operation": move,
            "labels": {"job": "ai-triage"},
            "requested_at": requested,
            "study_instance_uid": study,
            "status": 0,
            "status_category": "success",
            "responded_at": story.tick(),
        },
    )
    story.add(
        ev.MoveResponseReceived,
        str(move.id),
        {
            **response,
            "final": False,
            "status": 0xFF00,
            "status_category": "pending",
            "counts": {"remaining": 1, "completed": 1},
            "responded_at": story.tick(),
        },
    )
    story.add(
        ev.MoveResponseReceived,
        str(move.id),
        {
            **response,
            "final": True,
            "status": 0xB000,
            "status_category": "warning",
            "counts": {"remaining": 0, "completed": 1, "failed": 1},
            "failed_sop_instance_uids": instances[1:],
            "responded_at": story.tick(),
        },
    )


def _acted(story: _Story) -> None:
    """A person asked, on the tracker's web page, for a move's parked items to be requeued."""
    move = ev.Operation(kind="move", id=next(story.ids))
    story.add(
        ev.ActionRequested,
        str(move.id),
        {
            "action": "requeue",
            "operation": move,
            "node_id": story.node_id,
            "remote_address": "192.0.2.10",
            "session": "3f2a9c1e7b4d8a60",
            "at": story.tick(),
        },
    )
