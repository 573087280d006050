"""Pure: the facts pynetdicom's threads spool, and the one format they are spooled in.

A thread of pynetdicom only notes what happened, as one small frozen record per
event to be (a *fact*: an association established, a request that got no
response, a final C-MOVE-RSP sent, ...), stamped there with the event's id and
time. The outbox keeps it in the node's one spooled format (``FORMAT``: a JSON
array, the fact's tag first; ``fact_records`` makes its row), and the relay makes
its event with ``fact_events.event_of``: building and validating the event costs
the relay's process, not the thread pynetdicom needs for the next message. Since
the id and time come with the fact, the event is the same however often it is made.

``decode`` also reads the formats the node once spooled (a ``PairRecord`` before
facts had tags, ``PAIR_FORMAT``; the records before it, ``EARLIER_FORMAT``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

from dimsebus.schemas import events as ev
from dimsebus.services.node import pair_record, salvage
from dimsebus.services.node.capture import AnswerFacts, SentStore, Stamp
from dimsebus.services.node.moves import MoveResponse, ReceivedStore
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
class MoveResponded:
    """A C-MOVE-RSP to a C-MOVE-RQ the node sent (its pull from a remote archive)."""

    stamp: Stamp
    command: ev.MoveCommandData
    association: ev.AssociationRef
    message_id: int
    response: MoveResponse


@dataclass(frozen=True, slots=True)
class PullUnsent:
    """A re-issued C-MOVE of the node's pull that could not be asked or answered."""

    stamp: Stamp
    command: ev.MoveCommandData
    reason: str
    detail: str


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
    | MoveResponded
    | PullUnsent
    | Refused
)
"""Everything pynetdicom's threads spool."""

TAGS: dict[type[Any], str] = {  # each fact's tag, the first element of its body
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
    MoveResponded: "move_responded",
    PullUnsent: "pull_unsent",
    Refused: "refused",
}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {tag: TypeAdapter(kind) for kind, tag in TAGS.items()}
_JSON = json.JSONDecoder()


def encode(fact: Fact) -> bytes:
    """The body the outbox keeps of ``fact``: ``[tag, fields]``, compact JSON."""
    if isinstance(fact, PairRecord):
        return fact.encode()
    tag = TAGS[type(fact)]
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


def heading(fact: Fact) -> tuple[str, str | None, str]:
    """The type, operation id and subject the event of ``fact`` will have (when valid).

    The outbox keeps them beside the fact, for its move journal. A ``PairRecord``'s
    are its recorder's (``storepair.Outstanding``), not read back here.
    """
    match fact:
        case Established() | Rejected() | Ended():
            change = fact.how if isinstance(fact, Ended) else TAGS[type(fact)]
            return f"dicom.association.{change}", None, str(fact.association.id)
        case Missing() | Answered():
            received = isinstance(fact, Answered) and fact.answer.status is not None
            kind = "received" if received else "missing"
            operation = str(fact.sent.operation.id)
            return f"dicom.cstore.response.{kind}", operation, fact.sent.affected_sop_instance_uid
        case Invalid():
            return "dicom.message.invalid", None, salvage.invalid_subject(fact.facts)
        case Unsent():
            return "dicom.cstore.unsent", str(fact.operation.id), str(fact.operation.id)
        case Requested() | Completed():
            step = "requested" if isinstance(fact, Requested) else "completed"
            operation = str(fact.operation.id)
            return f"dicom.{fact.kind}.{step}", operation, operation
        case ResponseSent():
            operation = str(fact.operation.id)
            return "dicom.cstore.response.sent", operation, fact.store.affected_sop_instance_uid
        case MoveResponded() | PullUnsent():
            operation = str(fact.command.operation.id)
            moved = isinstance(fact, MoveResponded)
            type_ = "dicom.move.response.received" if moved else "dicom.cstore.unsent"
            return type_, operation, operation
        case Refused():
            return "dicom.access.refused", None, str(fact.association.id)
    raise TypeError(f"not a fact: {type(fact).__name__}")
