"""A C-STORE request/response pair as the DIMSE thread spools it, and the event made of it.

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
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
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
    their JSON is made once, not per C-STORE (one recorder per association).
    Each request's record is made when it is sent (``prepare``), on the thread
    that sends it, which waits for the response anyway; only the response's part
    is left for the thread that reads responses, which pynetdicom also needs to
    send the next request (``Outstanding.record``).
    """

    def __init__(self) -> None:
        self._shared: tuple[object, ...] = ()
        self._context = ""
        self._operation_id = ""

    def prepare(self, sent: SentStore, event_id: UUID, source: str) -> Outstanding:
        """``sent``'s record but for its response, to be the event ``event_id`` of ``source``."""
        shared = (sent.association, sent.operation, sent.move_originator, sent.labels)
        if shared != self._shared:
            self._shared = shared
            self._context = _dumps(shared)
            self._operation_id = str(sent.operation.id)
        request = [  # in _REQUEST order, written out: one per C-STORE
            sent.presentation_context_id,
            sent.transfer_syntax_uid,
            sent.message_id,
            sent.affected_sop_class_uid,
            sent.affected_sop_instance_uid,
            sent.attempt,
            sent.study_instance_uid,
            sent.patient_id,
            sent.requested_at.isoformat(),
        ]
        return Outstanding(
            sent=sent,
            event_id=str(event_id),
            correlation_id=self._operation_id,
            head=f"[{self._context},{_compact(request)[:-1]},",
            middle=f',"{event_id}","',
            tail=f'",{_compact(source)}]]',
        )

    def record(self, sent: SentStore, response: StoreResponse, stamp: Stamp) -> Record:
        """The outbox record of a request and its plain response (see ``plain_response``)."""
        return self.prepare(sent, stamp.id, stamp.source).record(response, stamp.time)


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A C-STORE-RQ waiting for its response, its record made but for the response's part.

    The body is ``head``, the response's values (``RESPONSE_KEYWORDS``), ``middle``,
    the time it came, ``tail``: the two arrays of ``_CONTEXT`` and ``_EXCHANGE``.
    """

    sent: SentStore
    event_id: str
    correlation_id: str
    head: str
    middle: str
    tail: str

    def record(self, response: StoreResponse, time: dt.datetime) -> Record:
        """The record of the exchange once ``response`` (plain) came at ``time``."""
        at = time.isoformat()
        values = _compact(
            [
                response.status,
                response.message_id,
                response.affected_sop_instance_uid,
                response.error_comment,
            ]
        )
        return Record(
            format=FORMAT,
            event_id=self.event_id,
            type=_RECEIVED,
            correlation_id=self.correlation_id,
            time=at,
            subject=self.sent.affected_sop_instance_uid,
            body=f"{self.head}{values[1:-1]}{self.middle}{at}{self.tail}".encode(),
        )


def event_of(row: OutboxRow) -> CloudEvent:
    """The event of a recorded exchange: ``capture.response_event`` of its facts."""
    body = row.body.decode()
    _, end = _JSON.raw_decode(body, 1)
    association, operation, originator, labels = _context(body[1:end])
    values, _ = _JSON.raw_decode(body, end + 1)
    exchange = dict(zip(_EXCHANGE, values, strict=True))
    request = {name: exchange[name] for name in _REQUEST}
    request["requested_at"] = dt.datetime.fromisoformat(request["requested_at"])
    sent = SentStore(
        association=association,
        operation=operation,
        move_originator=originator,
        labels=dict(labels),
        **request,
    )
    response = {name: exchange[name] for name in RESPONSE_KEYWORDS if exchange[name] is not None}
    stamp = Stamp(
        UUID(exchange["id"]), dt.datetime.fromisoformat(exchange["time"]), exchange["source"]
    )
    return response_event(sent, StoreResponse.of(response), stamp)


_JSON = json.JSONDecoder()


@functools.lru_cache(maxsize=256)
def _context(
    text: str,
) -> tuple[ev.AssociationRef, ev.Operation, ev.MoveOriginator | None, Mapping[str, str]]:
    """What an association's records share, validated once per association (``_CONTEXT``)."""
    shared = dict(zip(_CONTEXT, json.loads(text), strict=True))
    originator = shared["move_originator"]
    return (
        ev.AssociationRef.model_validate(shared["association"]),
        ev.Operation.model_validate(shared["operation"]),
        ev.MoveOriginator.model_validate(originator) if originator is not None else None,
        MappingProxyType(shared["labels"]),
    )


def _dumps(shared: tuple[object, ...]) -> str:
    """The JSON of what an association's records share: contract models and labels."""
    return json.dumps(shared, default=_model_json, separators=(",", ":"))


_compact = json.JSONEncoder(separators=(",", ":")).encode
"""JSON of plain values (numbers, text, None, lists of them), as short as it gets."""


def _model_json(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} has no JSON form in an exchange record")
