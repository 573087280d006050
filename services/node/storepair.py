"""A C-STORE request/response pair as the DIMSE thread spools it, and the event made of it.

A C-STORE-RSP that answers a request the node sent, with plain values (a
Status from 0 to 0xFFFF, a valid Message ID Being Responded To, text or
nothing in the others), is spooled as a ``PairRecord``: the request's facts,
the response's values and the event's id and time, as one compact JSON array.
The node's relay makes the event of it with ``event_of``, which calls
``capture.response_event``, the pure function the DIMSE thread would have
called, so the event is the same; only building and validating it costs the
relay's process instead of the thread that pynetdicom needs for the next
C-STORE. Whatever is not plain takes the general path: its event is built on
the DIMSE thread (``dimsebus.services.node.pairing``).

Records an earlier version spooled (``EARLIER_FORMAT``) are read into the same
``PairRecord``, so an outbox written before an upgrade still drains.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast
from uuid import UUID

from pydantic import BaseModel

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.outbox import OutboxRow, Record
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse, response_event
from dimsebus.services.node.salvage import message_id_or_none, status_problem

FORMAT = "dicom.cstore.pair/2"
EARLIER_FORMAT = "dicom.cstore.exchange/1"
"""The format of records spooled before ``PairRecord`` (two JSON arrays): read, not written."""

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

Request = tuple[int, str, int, str, str, int, str | None, str | None, str]
"""A C-STORE-RQ's own facts, in ``_REQUEST`` order (``requested_at`` in ISO 8601)."""
Response = tuple[int, int, str | None, str | None]
"""A plain C-STORE-RSP's values, in ``RESPONSE_KEYWORDS`` order."""


@dataclass(frozen=True, slots=True)
class PairRecord:
    """The facts of a C-STORE-RQ and its plain C-STORE-RSP: what the outbox keeps of them.

    ``context`` is the JSON of what the association's pairs share (``_CONTEXT``:
    association, operation, move originator, labels), made once per association.
    """

    context: str
    request: Request
    response: Response
    event_id: str
    time: str
    source: str

    def encode(self) -> bytes:
        """The record as one compact JSON array, as the outbox keeps it."""
        fields = (self.context, self.request, self.response, self.event_id, self.time, self.source)
        return _compact(fields).encode()

    @classmethod
    def decode(cls, body: bytes) -> PairRecord:
        """The record ``encode`` made ``body`` of."""
        context, request, response, event_id, time, source = json.loads(body)
        return cls(context, tuple(request), tuple(response), event_id, time, source)

    @classmethod
    def decode_earlier(cls, body: bytes) -> PairRecord:
        """The record of an ``EARLIER_FORMAT`` body: ``[context, [request, response, id...]]``."""
        text = body.decode()
        _, end = _JSON.raw_decode(text, 1)
        values, _ = _JSON.raw_decode(text, end + 1)
        request, response = tuple(values[:9]), tuple(values[9:13])
        return cls(text[1:end], request, response, *values[13:16])


class Recorder:
    """Makes the records of one association's pairs.

    Its requests share the association, operation, move originator and labels:
    their JSON is made once, not per C-STORE (one recorder per association).
    Each request's facts are laid out when it is sent (``prepare``), on the thread
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
        request: Request = (
            sent.presentation_context_id,
            sent.transfer_syntax_uid,
            sent.message_id,
            sent.affected_sop_class_uid,
            sent.affected_sop_instance_uid,
            sent.attempt,
            sent.study_instance_uid,
            sent.patient_id,
            sent.requested_at.isoformat(),
        )
        return Outstanding(sent, str(event_id), self._operation_id, self._context, request, source)

    def record(self, sent: SentStore, response: StoreResponse, stamp: Stamp) -> Record:
        """The outbox record of a request and its plain response (see ``plain_response``)."""
        return self.prepare(sent, stamp.id, stamp.source).record(response, stamp.time)


@dataclass(frozen=True, slots=True)
class Outstanding:
    """A C-STORE-RQ waiting for its response, its record laid out but for the response."""

    sent: SentStore
    event_id: str
    correlation_id: str
    context: str
    request: Request
    source: str

    def record(self, response: StoreResponse, time: dt.datetime) -> Record:
        """The record of the pair once ``response`` (plain) came at ``time``."""
        at = time.isoformat()
        values = (  # plain (``plain_response``): numbers and text, as ``Response`` says
            response.status,
            response.message_id,
            response.affected_sop_instance_uid,
            response.error_comment,
        )
        pair = PairRecord(
            self.context, self.request, cast(Response, values), self.event_id, at, self.source
        )
        return Record(
            format=FORMAT,
            event_id=self.event_id,
            type=_RECEIVED,
            correlation_id=self.correlation_id,
            time=at,
            subject=self.sent.affected_sop_instance_uid,
            body=pair.encode(),
        )


def event_of(row: OutboxRow) -> CloudEvent:
    """The event of a spooled pair, of either format: ``pair_event`` of its record."""
    if row.format == EARLIER_FORMAT:
        return pair_event(PairRecord.decode_earlier(row.body))
    return pair_event(PairRecord.decode(row.body))


def pair_event(record: PairRecord) -> CloudEvent:
    """The event of a pair's facts: ``capture.response_event``, under the record's id (pure)."""
    association, operation, originator, labels = _context(record.context)
    request: dict[str, Any] = dict(zip(_REQUEST, record.request, strict=True))
    request["requested_at"] = dt.datetime.fromisoformat(record.request[8])
    sent = SentStore(
        association=association,
        operation=operation,
        move_originator=originator,
        labels=dict(labels),
        **request,
    )
    response = {
        name: value
        for name, value in zip(RESPONSE_KEYWORDS, record.response, strict=True)
        if value is not None
    }
    stamp = Stamp(UUID(record.event_id), dt.datetime.fromisoformat(record.time), record.source)
    return response_event(sent, StoreResponse.of(response), stamp)


FORMATS = {FORMAT: event_of, EARLIER_FORMAT: event_of}
"""What the node's relay reads: each format this module spools or once spooled."""

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
"""JSON of plain values (numbers, text, None, tuples of them), as short as it gets."""


def _model_json(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} has no JSON form in a pair record")
