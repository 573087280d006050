"""A C-STORE exchange as the DIMSE thread spools it, and the event the relay makes of it.

A C-STORE-RSP that answers a request the node sent, with plain values (a
Status from 0 to 0xFFFF, a valid Message ID Being Responded To, text or
nothing in the others), is spooled as a record: the request's facts, the
response's values and the event's id and time, in JSON. The node's relay makes
the event of it with ``capture.response_event``, the pure function the DIMSE
thread would have called, so the event is the same; only building and
validating it costs the relay's process instead of the thread that pynetdicom
needs for the next C-STORE. Whatever is not plain takes the general path: its
event is built on the DIMSE thread (``services.node.dimse``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from schemas import events as ev
from schemas.envelope import CloudEvent
from services.bus.outbox import OutboxRow, Record
from services.node.capture import SentStore, Stamp, StoreResponse, response_event
from services.node.salvage import message_id_or_none, status_problem

FORMAT = "dicom.cstore.exchange/1"

RESPONSE_KEYWORDS = (
    "Status",
    "MessageIDBeingRespondedTo",
    "AffectedSOPInstanceUID",
    "ErrorComment",
)
"""The C-STORE-RSP elements a record carries (the rest of the command set is not kept)."""


def plain_response(values: Mapping[str, object]) -> StoreResponse | None:
    """The response in ``values`` (``RESPONSE_KEYWORDS`` to value) if a record can carry it."""
    response = StoreResponse.of(values)
    if (
        status_problem(response.status) is None
        and message_id_or_none(response.message_id) is not None
        and isinstance(response.affected_sop_instance_uid, str | None)
        and isinstance(response.error_comment, str | None)
    ):
        return response
    return None


_RECEIVED = "dicom.cstore.response.received"
_CONTEXT = ("association", "operation", "move_originator", "labels")
_REQUEST = (
    "presentation_context_id",
    "transfer_syntax_uid",
    "message_id",
    "affected_sop_class_uid",
    "affected_sop_instance_uid",
    "attempt",
    "study_instance_uid",
    "patient_id",
    "requested_at",
)
_EXCHANGE = (*_REQUEST, *RESPONSE_KEYWORDS, "id", "time", "source")
"""A record's body is two JSON arrays: the ``_CONTEXT`` it shares, its ``_EXCHANGE``."""


class Recorder:
    """Makes the records of one association's exchanges.

    Its requests share the association, operation, move originator and labels:
    their JSON is made once, not per C-STORE (one recorder per association, used
    from the thread that reads its responses).
    """

    def __init__(self) -> None:
        self._shared: tuple[object, ...] = ()
        self._context = ""
        self._operation_id = ""

    def record(self, sent: SentStore, response: StoreResponse, stamp: Stamp) -> Record:
        """The outbox record of a request and its plain response (see ``plain_response``)."""
        shared = (sent.association, sent.operation, sent.move_originator, sent.labels)
        if shared != self._shared:
            self._shared = shared
            self._context = _dumps(shared)
            self._operation_id = str(sent.operation.id)
        event_id, time = str(stamp.id), stamp.time.isoformat()
        exchange = [  # in _EXCHANGE order, written out: this runs on the DIMSE thread
            sent.presentation_context_id,
            sent.transfer_syntax_uid,
            sent.message_id,
            sent.affected_sop_class_uid,
            sent.affected_sop_instance_uid,
            sent.attempt,
            sent.study_instance_uid,
            sent.patient_id,
            sent.requested_at.isoformat(),
            response.status,
            response.message_id,
            response.affected_sop_instance_uid,
            response.error_comment,
            event_id,
            time,
            stamp.source,
        ]
        return Record(
            format=FORMAT,
            event_id=event_id,
            type=_RECEIVED,
            correlation_id=self._operation_id,
            time=time,
            subject=sent.affected_sop_instance_uid,
            body=f"[{self._context},{json.dumps(exchange)}]".encode(),
        )


def event_of(row: OutboxRow) -> CloudEvent:
    """The event of a recorded exchange: ``capture.response_event`` of its facts."""
    shared, values = json.loads(row.body)
    context = dict(zip(_CONTEXT, shared, strict=True))
    exchange = dict(zip(_EXCHANGE, values, strict=True))
    originator = context["move_originator"]
    request = {name: exchange[name] for name in _REQUEST}
    request["requested_at"] = dt.datetime.fromisoformat(request["requested_at"])
    sent = SentStore(
        association=ev.AssociationRef.model_validate(context["association"]),
        operation=ev.Operation.model_validate(context["operation"]),
        move_originator=(
            ev.MoveOriginator.model_validate(originator) if originator is not None else None
        ),
        labels=context["labels"],
        **request,
    )
    response = {name: exchange[name] for name in RESPONSE_KEYWORDS if exchange[name] is not None}
    stamp = Stamp(
        UUID(exchange["id"]), dt.datetime.fromisoformat(exchange["time"]), exchange["source"]
    )
    return response_event(sent, StoreResponse.of(response), stamp)


def _dumps(shared: tuple[object, ...]) -> str:
    """The JSON of what an association's records share: contract models and labels."""
    return json.dumps(shared, default=_model_json, separators=(",", ":"))


def _model_json(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} has no JSON form in an exchange record")
