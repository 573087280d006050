"""The node as Move SCU, its pure part: identifiers, responses as events, stores matched.

The shell (``dimsebus.services.node.mover``) opens the association and sends the C-MOVE-RQ;
everything it decides is here: the Study Root identifier of a move command
(PS3.4 C.6.2.1), each C-MOVE-RSP as ``dicom.move.response.received``, the Message
ID of a new C-MOVE, and whether a C-STORE-RQ the node received belongs to one of
its moves (Move Originator AE Title and Message ID, PS3.7 9.1.1.1), with the
``dicom.cstore.response.sent`` that records the node's answer to it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset

from dimsebus.schemas import events as ev
from dimsebus.schemas.limits import MAX_UIDS, clip
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.errors import DimsebusError
from dimsebus.services.node.capture import Stamp, envelope

PENDING = (0xFF00, 0xFF01)
MAX_MESSAGE_ID = 0xFFFF


class MoveCommandError(DimsebusError, ValueError):
    """A move that cannot be asked for as given (names the argument)."""


def move_identifier(data: ev.MoveCommandData) -> Dataset:
    """The C-MOVE-RQ identifier of a move command: its level and unique keys (PS3.4 C.6.2.1)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = data.query_level
    identifier.StudyInstanceUID = data.study_instance_uid
    series = list(data.series_instance_uids or ())
    if series:
        identifier.SeriesInstanceUID = series[0] if len(series) == 1 else series
    instances = list(data.sop_instance_uids or ())
    if instances:
        identifier.SOPInstanceUID = instances[0] if len(instances) == 1 else instances
    return identifier


def query_level(study: str | None, series: list[str], instances: list[str]) -> ev.MoveLevel:
    """The level that the arguments of ``dimsebus move`` ask for, or why none does."""
    if not study:
        raise MoveCommandError("--study: every move names its study (Study Root)")
    if instances:
        if len(series) > 1:
            raise MoveCommandError("--series: instances are moved from at most one series")
        return "IMAGE"
    return "SERIES" if series else "STUDY"


def next_message_id(last: int, in_use: Container[int]) -> int:
    """The Message ID after ``last`` (1..65535, wrapping) that no open C-MOVE uses."""
    candidate = last
    for _ in range(MAX_MESSAGE_ID):
        candidate = candidate % MAX_MESSAGE_ID + 1
        if candidate not in in_use:
            return candidate
    raise RuntimeError("65535 C-MOVEs are open at once")


@dataclass(frozen=True, slots=True)
class MoveResponse:
    """The values of one C-MOVE-RSP that its event carries."""

    status: int
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None
    error_comment: str | None = None
    failed_uids: tuple[str, ...] = ()


def response_event(
    data: ev.MoveCommandData,
    association: ev.AssociationRef,
    message_id: int,
    response: MoveResponse,
    stamp: Stamp,
) -> ev.MoveResponseReceived:
    """``dicom.move.response.received`` for one C-MOVE-RSP; a final one lists failed instances."""
    final = response.status not in PENDING
    category = describe_status(response.status, Service.QUERY_RETRIEVE).category.value
    failed = response.failed_uids if final else ()
    payload = ev.MoveResponseData(
        association=association,
        message_id=message_id,
        operation=data.operation,
        move_destination=data.destination_ae_title,
        attempt=data.attempt,
        final=final,
        status=response.status,
        status_category=category,  # type: ignore[arg-type]
        error_comment=response.error_comment,
        counts=ev.SubOperationCounts(
            remaining=response.remaining,
            completed=response.completed or 0,
            failed=response.failed or 0,
            warning=response.warning or 0,
        ),
        failed_sop_instance_uids=failed[:MAX_UIDS],
        failed_sop_instance_uids_omitted=max(len(failed) - MAX_UIDS, 0),
        labels=data.labels,
        responded_at=stamp.time,
        source=data.source,
        study_instance_uid=data.study_instance_uid,
        sop_instance_uids=data.sop_instance_uids if data.query_level == "IMAGE" else None,
    )
    return envelope(ev.MoveResponseReceived, payload, str(data.operation.id), stamp)


def reissued(command: ev.ResendSubOperations) -> ev.MoveCommandData:
    """The C-MOVE that retries a pull: exactly the failed instances, at IMAGE level.

    Same operation (the tracker folds it into the same move), the command's attempt;
    without their series, which the node asks the archive for (``by_series``).
    """
    data = command.data
    if data.source is None or data.study_instance_uid is None:
        raise MoveCommandError(f"resend {command.id} names no archive to C-MOVE from (source)")
    return ev.MoveCommandData(
        operation=data.operation,
        node_id=data.node_id,
        source=data.source,
        destination_ae_title=data.destination_ae_title,
        query_level="IMAGE",
        study_instance_uid=data.study_instance_uid,
        sop_instance_uids=data.sop_instance_uids,
        attempt=data.attempt,
        labels=data.labels,
    )


def unsent_event(
    data: ev.MoveCommandData, reason: ev.UnsentReason, detail: str, stamp: Stamp
) -> ev.CStoreUnsent:
    """``dicom.cstore.unsent`` for a re-issued C-MOVE that could not be asked or answered.

    It names the archive and study, so that the retrier's next attempt is again a
    C-MOVE from that archive.
    """
    payload = ev.CStoreUnsentData(
        operation=data.operation,
        destination_ae_title=data.destination_ae_title,
        sop_instance_uids=data.sop_instance_uids or (),
        attempt=data.attempt,
        labels=data.labels,
        reason=reason,
        detail=clip(detail),
        at=stamp.time,
        source=data.source,
        study_instance_uid=data.study_instance_uid,
    )
    return envelope(ev.CStoreUnsent, payload, str(data.operation.id), stamp)


class OpenMovesView(Protocol):
    """Where the node's open C-MOVEs are looked up by Message ID (a dict will do)."""

    def get(self, message_id: int, /) -> ev.MoveCommandData | None:
        """The open C-MOVE with ``message_id``, if any."""


def move_of_store(
    own_ae_title: str,
    originator_ae_title: str | None,
    originator_message_id: int | None,
    open_moves: OpenMovesView,
) -> ev.MoveCommandData | None:
    """The node's own open C-MOVE that a received C-STORE-RQ is a sub-operation of, if any."""
    if not originator_ae_title or originator_message_id is None:
        return None
    if originator_ae_title.strip() != own_ae_title.strip():
        return None
    return open_moves.get(originator_message_id)


@dataclass(frozen=True, slots=True)
class ReceivedStore:
    """A C-STORE-RQ the node received as a move's destination, and how it answered."""

    association: ev.AssociationRef
    presentation_context_id: int
    transfer_syntax_uid: str
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    originator_message_id: int
    requested_at: dt.datetime
    status: int
    error_comment: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None


def answered_event(
    move: ev.MoveCommandData, store: ReceivedStore, stamp: Stamp, own_ae_title: str
) -> ev.CStoreResponseSent:
    """``dicom.cstore.response.sent``: the node's answer to a sub-operation of its own move."""
    return sent_answer_event(move.operation, move.attempt, move.labels, store, stamp, own_ae_title)


def sent_answer_event(
    operation: ev.Operation,
    attempt: int,
    labels: dict[str, str],
    store: ReceivedStore,
    stamp: Stamp,
    own_ae_title: str,
) -> ev.CStoreResponseSent:
    """``answered_event`` of what it needs of the move: its operation, attempt and labels."""
    category = describe_status(store.status, Service.STORAGE).category.value
    payload = ev.CStoreResponseReceivedData(
        association=store.association,
        presentation_context_id=store.presentation_context_id,
        transfer_syntax_uid=store.transfer_syntax_uid,
        message_id=store.message_id,
        affected_sop_class_uid=store.affected_sop_class_uid,
        affected_sop_instance_uid=store.affected_sop_instance_uid,
        move_originator=ev.MoveOriginator(
            ae_title=own_ae_title, message_id=store.originator_message_id
        ),
        operation=operation,
        attempt=attempt,
        labels=labels,
        requested_at=store.requested_at,
        study_instance_uid=store.study_instance_uid,
        patient_id=store.patient_id,
        status=store.status,
        status_category=category,  # type: ignore[arg-type]
        error_comment=store.error_comment,
        responded_at=stamp.time,
    )
    return envelope(ev.CStoreResponseSent, payload, store.affected_sop_instance_uid, stamp)


def parse_remote(text: str, option: str = "--from") -> tuple[str, str, int]:
    """``AE@HOST:PORT`` as (AE title, host, port), or an error naming ``option``."""
    ae_title, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and ae_title and host and port.isdigit() and 0 < int(port) < 65536):
        raise MoveCommandError(f"{option}: {text!r} is not AE@HOST:PORT (e.g. PACS@10.0.0.5:104)")
    return ae_title, host, int(port)


def series_query(study_instance_uid: str) -> Dataset:
    """The C-FIND-RQ identifier for every series of a study (Study Root, SERIES level)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study_instance_uid
    identifier.SeriesInstanceUID = ""
    return identifier


def instance_query(study_instance_uid: str, series_instance_uid: str) -> Dataset:
    """The C-FIND-RQ identifier for every instance of one series (IMAGE level, hierarchical)."""
    identifier = series_query(study_instance_uid)
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = series_instance_uid
    identifier.SOPInstanceUID = ""
    return identifier


def by_series(data: ev.MoveCommandData, series_of: Mapping[str, str]) -> list[ev.MoveCommandData]:
    """An IMAGE-level move without its series as one move per series (a hierarchical archive).

    ``series_of`` maps each SOP Instance UID the archive holds to its series. An
    instance the archive does not hold in the study is an error naming it; so is a
    first attempt spanning several series (``dimsebus move`` takes one).
    """
    wanted = list(data.sop_instance_uids or ())
    unknown = [uid for uid in wanted if uid not in series_of]
    if unknown:
        raise MoveCommandError(
            f"{len(unknown)} instance(s) not in study {data.study_instance_uid} at "
            f"{data.source.ae_title}: {', '.join(unknown[:3])}"
        )
    groups: dict[str, list[str]] = {}
    for uid in wanted:
        groups.setdefault(series_of[uid], []).append(uid)
    if data.attempt == 1 and len(groups) > 1:
        raise MoveCommandError(
            f"--instance: the instances are in {len(groups)} series; a move takes one"
        )
    return [
        ev.MoveCommandData.model_validate(
            data.model_dump() | {"series_instance_uids": [series], "sop_instance_uids": uids}
        )
        for series, uids in sorted(groups.items())
    ]
