"""Pure: a C-STORE request/response pair as the node spools it, and the event made of it.

A C-STORE-RSP that answers a request the node sent, with plain values (a
Status from 0 to 0xFFFF, a valid Message ID Being Responded To, text or
nothing in the others), is spooled as a ``PairRecord``: the request's facts,
the response's values and the event's id and time, as one compact JSON array.
It is the fact the node spools per C-STORE (``dimsebus.services.node.facts``, tag
``pair``), so it is kept this compact. ``pair_event`` makes its event with
``capture.response_event``, the function the DIMSE thread would have called, so
the event is the same; only building and validating it costs the relay's
process instead of the thread that pynetdicom needs for the next C-STORE.
``dimsebus.services.node.storepair`` lays records out on the DIMSE side.

Records earlier versions spooled (``PAIR_FORMAT``, ``EARLIER_FORMAT``) are read into
the same ``PairRecord``, so an outbox written before an upgrade still drains.
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

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse, response_event
from dimsebus.services.node.salvage import message_id_or_none, status_problem

TAG = "pair"
"""A pair's tag in the node's one spooled format (``facts.FORMAT``)."""
PAIR_FORMAT = "dicom.cstore.pair/2"
"""The format pairs were spooled in before every fact was (the array without its tag): read."""
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
        """The record as one compact JSON array, its tag first, as the outbox keeps it."""
        fields = (
            TAG,
            self.context,
            self.request,
            self.response,
            self.event_id,
            self.time,
            self.source,
        )
        return _compact(fields).encode()

    @classmethod
    def decode(cls, body: bytes) -> PairRecord:
        """The record ``encode`` made ``body`` of, or a ``PAIR_FORMAT`` body (no tag)."""
        values = json.loads(body)
        if values[0] == TAG:
            values = values[1:]
        context, request, response, event_id, time, source = values
        return cls(context, tuple(request), tuple(response), event_id, time, source)

    @classmethod
    def decode_earlier(cls, body: bytes) -> PairRecord:
        """The record of an ``EARLIER_FORMAT`` body: ``[context, [request, response, id...]]``."""
        text = body.decode()
        _, end = _JSON.raw_decode(text, 1)
        values, _ = _JSON.raw_decode(text, end + 1)
        request, response = tuple(values[:9]), tuple(values[9:13])
        return cls(text[1:end], request, response, *values[13:16])


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


def context_json(shared: tuple[object, ...]) -> str:
    """The JSON of what an association's records share: contract models and labels."""
    return json.dumps(shared, default=_model_json, separators=(",", ":"))


_compact = json.JSONEncoder(separators=(",", ":")).encode
"""JSON of plain values (numbers, text, None, tuples of them), as short as it gets."""


def _model_json(value: object) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} has no JSON form in a pair record")
