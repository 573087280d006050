"""The C-STORE pairs the DIMSE side spools: a request laid out when sent, recorded when answered.

A C-STORE-RSP with plain values (``pair_record.plain_response``) is spooled as its
pair's record (``dimsebus.services.node.pair_record``, a fact of the node's one
format); the relay makes its event. This module lays records out on the threads
pynetdicom runs, as cheaply as it can: their JSON is what the outbox keeps.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from dimsebus.services.bus.outbox import Record
from dimsebus.services.node.capture import SentStore, Stamp, StoreResponse
from dimsebus.services.node.facts import FORMAT
from dimsebus.services.node.pair_record import (
    EARLIER_FORMAT,
    PAIR_FORMAT,
    RESPONSE_KEYWORDS,
    PairRecord,
    Request,
    Response,
    context_json,
    pair_event,
    plain_response,
)

__all__ = [  # the pure half's names, for this module's importers
    "EARLIER_FORMAT",
    "PAIR_FORMAT",
    "RESPONSE_KEYWORDS",
    "Outstanding",
    "PairRecord",
    "Recorder",
    "pair_event",
    "plain_response",
]

_RECEIVED = "dicom.cstore.response.received"


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
            self._context = context_json(shared)
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
