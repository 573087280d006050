"""Pure: the facts pynetdicom's threads spool, and ``event_of``, which makes their events.

A thread of pynetdicom only notes what happened, as one small frozen record per
event to be (a *fact*: an association established, a request that got no
response, a final C-MOVE-RSP sent, ...), stamped there with the event's id and
time. The outbox keeps it in the node's one spooled format (``FORMAT``: a JSON
array, the fact's tag first; ``fact_records`` makes its row), and the relay makes its event with
``event_of``: building and validating the event costs the relay's process, not
the thread pynetdicom needs for the next message. Since the id and time come
with the fact, the event is the same however often it is made.

``event_of`` never raises on a fact's values: what the contract rejects becomes
``dicom.message.invalid`` under the fact's id, as it did when the events were
built on pynetdicom's threads. ``row_event`` reads every format the node spools
or once spooled (a ``PairRecord`` before facts had tags, ``PAIR_FORMAT``; the
records before it, ``EARLIER_FORMAT``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node import capture, moves, pair_record, salvage
from dimsebus.services.node.capture import AnswerFacts, SentStore, Stamp
from dimsebus.services.node.moves import ReceivedStore
from dimsebus.services.node.pair_record import PairRecord
from dimsebus.services.node.salvage import InvalidFacts

FORMAT = "dimsebus.fact/1"
"""The one format the node spools in: a JSON array, its first element the fact's tag."""


@dataclass(frozen=True, slots=True)
class Established:
    """An association established: its negotiated contexts (id, abstract, transfer syntax)."""

    stamp: Stamp
    association: ev.AssociationRef
    contexts: tuple[tuple[int, str, str | None], ...]
    max_pdu_length: int | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """An A-ASSOCIATE-RJ, sent or received (PS3.8 9.3.4)."""

    stamp: Stamp
    association: ev.AssociationRef
    result: str
    source: str
    reason: int
    reason_text: str


@dataclass(frozen=True, slots=True)
class Ended:
    """An association released, or aborted (then by whom and why)."""

    stamp: Stamp
    association: ev.AssociationRef
    how: Literal["released", "aborted"]
    source: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    """A C-STORE-RQ whose response will never come."""

    stamp: Stamp
    sent: SentStore
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Answered:
    """A C-STORE-RQ and its response, one that a ``PairRecord`` cannot carry."""

    stamp: Stamp
    sent: SentStore
    answer: AnswerFacts


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message, or a handler's work, that the contract has no other event for."""

    stamp: Stamp
    facts: InvalidFacts


@dataclass(frozen=True, slots=True)
class Unsent:
    """Sub-operations of a move that got no association to be sent on."""

    stamp: Stamp
    operation: ev.Operation
    destination_ae_title: str
    uids: tuple[str, ...]
    attempt: int
    originator: ev.MoveOriginator | None
    labels: dict[str, str]
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Requested:
    """A C-MOVE-RQ or C-GET-RQ the node received; ``details`` as its event's data has them."""

    stamp: Stamp
    kind: Literal["move", "get"]
    association: ev.AssociationRef
    operation: ev.Operation
    message_id: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Completed:
    """The final C-MOVE-RSP or C-GET-RSP the node sent; ``details`` as its event has them."""

    stamp: Stamp
    kind: Literal["move", "get"]
    association: ev.AssociationRef
    operation: ev.Operation
    message_id: int
    status: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ResponseSent:
    """The node's C-STORE-RSP to a sub-operation of a move it asked for (its pull)."""

    stamp: Stamp
    operation: ev.Operation
    attempt: int
    labels: dict[str, str]
    own_ae_title: str
    store: ReceivedStore


@dataclass(frozen=True, slots=True)
class Refused:
    """An association or request the node's access control refused."""

    stamp: Stamp
    association: ev.AssociationRef
    details: dict[str, Any] = field(default_factory=dict)


Fact = (
    PairRecord
    | Established
    | Rejected
    | Ended
    | Missing
    | Answered
    | Invalid
    | Unsent
    | Requested
    | Completed
    | ResponseSent
    | Refused
)
"""Everything pynetdicom's threads spool."""

_TAGS: dict[type[Any], str] = {
    Established: "established",
    Rejected: "rejected",
    Ended: "ended",
    Missing: "missing",
    Answered: "answered",
    Invalid: "invalid",
    Unsent: "unsent",
    Requested: "requested",
    Completed: "completed",
    ResponseSent: "response_sent",
    Refused: "refused",
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {tag: TypeAdapter(kind) for kind, tag in _TAGS.items()}
_JSON = json.JSONDecoder()


def encode(fact: Fact) -> bytes:
    """The body the outbox keeps of ``fact``: ``[tag, fields]``, compact JSON."""
    if isinstance(fact, PairRecord):
        return fact.encode()
    tag = _TAGS[type(fact)]
    return b'["' + tag.encode() + b'",' + _ADAPTERS[tag].dump_json(fact) + b"]"


def decode(format: str | None, body: bytes) -> Fact:
    """The fact of a row spooled in ``format``: the node's one format, or an earlier one."""
    if format == pair_record.EARLIER_FORMAT:
        return PairRecord.decode_earlier(body)
    if format == pair_record.PAIR_FORMAT:
        return PairRecord.decode(body)
    if format != FORMAT:
        raise ValueError(f"not a format of facts: {format!r}")
    text = body.decode()
    tag, end = _JSON.raw_decode(text, 1)
    if tag == pair_record.TAG:
        return PairRecord.decode(body)
    adapter = _ADAPTERS.get(tag)
    if adapter is None:
        raise ValueError(f"no fact is tagged {tag!r}")
    fact: Fact = adapter.validate_json(text[end + 1 : -1])
    return fact


class RowLike(Protocol):
    """What ``row_event`` reads of an outbox row."""

    @property
    def format(self) -> str | None: ...

    @property
    def body(self) -> bytes: ...


def row_event(row: RowLike) -> CloudEvent:
    """The event of a recorded outbox row, of any format the node spools or once spooled."""
    return event_of(decode(row.format, row.body))


FORMATS: Mapping[str, Callable[[RowLike], CloudEvent]] = {
    FORMAT: row_event,
    pair_record.PAIR_FORMAT: row_event,
    pair_record.EARLIER_FORMAT: row_event,
}
"""What the node's relay reads: each format the node spools or once spooled."""


def event_of(fact: Fact) -> CloudEvent:
    """The event of ``fact``, under its id and time; never raises on the fact's values."""
    if isinstance(fact, PairRecord):
        return pair_record.pair_event(fact)
    try:
        return _MAKERS[type(fact)](fact)
    except (ValidationError, ValueError, TypeError, KeyError) as exc:
        return _unmade(fact, exc)


def _established(fact: Established) -> CloudEvent:
    contexts = tuple(
        ev.PresentationContext(
            id=context_id,
            abstract_syntax_uid=abstract,
            transfer_syntax_uid=transfer,
            accepted=True,
        )
        for context_id, abstract, transfer in fact.contexts
    )
    return capture.association_event(
        "established",
        fact.association,
        fact.stamp,
        presentation_contexts=contexts,
        max_pdu_length=fact.max_pdu_length,
    )


def _rejected(fact: Rejected) -> CloudEvent:
    return capture.association_event(
        "rejected",
        fact.association,
        fact.stamp,
        result=fact.result,
        source=fact.source,
        reason=fact.reason,
        reason_text=fact.reason_text,
    )


def _ended(fact: Ended) -> CloudEvent:
    if fact.how == "released":
        return capture.association_event("released", fact.association, fact.stamp)
    return capture.association_event(
        "aborted", fact.association, fact.stamp, source=fact.source, reason=fact.reason
    )


def _missing(fact: Missing) -> CloudEvent:
    return capture.missing_event(fact.sent, fact.reason, fact.detail, fact.stamp)


def _answered(fact: Answered) -> CloudEvent:
    return capture.answer_of(fact.sent, fact.answer, fact.stamp)


def _invalid(fact: Invalid) -> CloudEvent:
    return salvage.invalid_of(fact.facts, fact.stamp)


def _unsent(fact: Unsent) -> CloudEvent:
    return capture.unsent_event(
        fact.operation,
        fact.destination_ae_title,
        list(fact.uids),
        fact.attempt,
        fact.originator,
        fact.labels,
        fact.reason,  # type: ignore[arg-type]  # validated by the event's model
        fact.detail,
        fact.stamp,
    )


def _requested(fact: Requested) -> CloudEvent:
    model = ev.MoveRequested if fact.kind == "move" else ev.GetRequested
    return capture.retrieve_requested_event(model, _retrieval_data(fact), fact.stamp)


def _completed(fact: Completed) -> CloudEvent:
    model = ev.MoveCompleted if fact.kind == "move" else ev.GetCompleted
    data = _retrieval_data(fact)
    return capture.retrieve_completed_event(model, data, fact.status, fact.stamp)


def _response_sent(fact: ResponseSent) -> CloudEvent:
    return moves.sent_answer_event(
        fact.operation, fact.attempt, fact.labels, fact.store, fact.stamp, fact.own_ae_title
    )


def _refused(fact: Refused) -> CloudEvent:
    return capture.access_refused_event(fact.association, fact.stamp, **fact.details)


def _retrieval_data(fact: Requested | Completed) -> dict[str, object]:
    return {
        **fact.details,
        "association": fact.association,
        "message_id": fact.message_id,
        "operation": fact.operation,
    }


_MAKERS: dict[type[Any], Callable[[Any], CloudEvent]] = {
    Established: _established,
    Rejected: _rejected,
    Ended: _ended,
    Missing: _missing,
    Answered: _answered,
    Invalid: _invalid,
    Unsent: _unsent,
    Requested: _requested,
    Completed: _completed,
    ResponseSent: _response_sent,
    Refused: _refused,
}


def heading(fact: Fact) -> tuple[str, str | None, str]:
    """The type, operation id and subject the event of ``fact`` will have (when valid).

    The outbox keeps them beside the fact, for its move journal. A ``PairRecord``'s
    are its recorder's (``storepair.Outstanding``), not read back here.
    """
    match fact:
        case Established() | Rejected() | Ended():
            change = fact.how if isinstance(fact, Ended) else _TAGS[type(fact)]
            return f"dicom.association.{change}", None, str(fact.association.id)
        case Missing() | Answered():
            received = isinstance(fact, Answered) and fact.answer.status is not None
            kind = "received" if received else "missing"
            operation = str(fact.sent.operation.id)
            return f"dicom.cstore.response.{kind}", operation, fact.sent.affected_sop_instance_uid
        case Invalid():
            said = fact.facts
            association = str(said.association_id) if said.association_id else None
            subject = said.affected_sop_instance_uid or association or said.message
            return "dicom.message.invalid", None, subject
        case Unsent():
            return "dicom.cstore.unsent", str(fact.operation.id), str(fact.operation.id)
        case Requested() | Completed():
            step = "requested" if isinstance(fact, Requested) else "completed"
            operation = str(fact.operation.id)
            return f"dicom.{fact.kind}.{step}", operation, operation
        case ResponseSent():
            operation = str(fact.operation.id)
            return "dicom.cstore.response.sent", operation, fact.store.affected_sop_instance_uid
        case Refused():
            return "dicom.access.refused", None, str(fact.association.id)
    raise TypeError(f"not a fact: {type(fact).__name__}")


_MESSAGES: dict[type[Any], str] = {
    Established: "A-ASSOCIATE-AC",
    Rejected: "A-ASSOCIATE-RJ",
    Ended: "A-RELEASE",
    Missing: "C-STORE-RQ",
    Answered: "C-STORE-RSP",
    Invalid: "unknown",
    Unsent: "C-STORE-RQ",
    Requested: "C-MOVE-RQ",
    Completed: "C-MOVE-RSP",
    ResponseSent: "C-STORE-RSP",
    Refused: "A-ASSOCIATE-RQ",
}


def _message_of(fact: Any) -> str:
    """The DICOM message a fact is about, for its invalid event."""
    if isinstance(fact, Requested | Completed):
        return f"C-{fact.kind.upper()}-{'RQ' if isinstance(fact, Requested) else 'RSP'}"
    if isinstance(fact, Ended):
        return "A-RELEASE" if fact.how == "released" else "A-ABORT"
    return _MESSAGES[type(fact)]


def _unmade(fact: Any, exc: Exception) -> CloudEvent:
    """``dicom.message.invalid`` for a fact whose own event the contract rejects."""
    error = salvage.describe_error(exc) if isinstance(exc, ValidationError) else str(exc)
    association = getattr(fact, "association", None) or getattr(
        getattr(fact, "sent", None), "association", None
    )
    facts = salvage.invalid_facts(
        _message_of(fact),
        f"the {_TAGS[type(fact)]} fact could not be made its event: {type(exc).__name__}: {error}",
        association_id=getattr(association, "id", None),
        operation=getattr(fact, "operation", None),
        fields={
            name: getattr(fact, name)
            for name in fact.__dataclass_fields__
            if name not in ("stamp", "association")
        },
    )
    return salvage.invalid_of(facts, fact.stamp)
