"""Pure: ``event_of``, the one function that makes the event of each fact the node spools.

The relay calls it on every recorded outbox row (``row_event``, by the formats in
``FORMATS``): a fact (``dimsebus.services.node.facts``) becomes its event under the id
and time it was stamped with on pynetdicom's thread, through the builders that
thread used to call (``capture``, ``salvage``, ``moves``), so the event is the same,
however often it is made. It never raises on a fact's values: what the contract
rejects becomes ``dicom.message.invalid`` under the fact's id, as it did when the
events were built on pynetdicom's threads.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from uuid import UUID

from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node import capture, moves, pair_record, salvage
from dimsebus.services.node.facts import (
    FORMAT,
    TAGS,
    Answered,
    Completed,
    Ended,
    Established,
    Fact,
    Invalid,
    Missing,
    MoveResponded,
    PullUnsent,
    Refused,
    Rejected,
    Requested,
    ResponseSent,
    Unsent,
    decode,
)
from dimsebus.services.node.pair_record import PairRecord
from dimsebus.services.node.stamp import Stamp

_KINDS = {tag: kind for kind, tag in TAGS.items()}


class RowLike(Protocol):
    """What ``row_event`` reads of an outbox row."""

    @property
    def format(self) -> str | None: ...

    @property
    def body(self) -> bytes: ...


def row_event(row: RowLike) -> CloudEvent:
    """The event of a recorded outbox row, of any format the node spools or once spooled.

    A fact whose fields do not read back as its kind (a value of the wrong type
    spooled by the thread) is ``dicom.message.invalid`` under its stamp, rather than
    a row no relay can publish.
    """
    try:
        fact = decode(row.format, row.body)
    except ValidationError as exc:
        return _misspooled(row.body, exc)
    return event_of(fact)


def _misspooled(body: bytes, exc: ValidationError) -> CloudEvent:
    """``dicom.message.invalid`` for a fact that does not read back; raises without a stamp."""
    tag, fields = json.loads(body)
    stamp = fields["stamp"]
    said = salvage.invalid_facts(
        _MESSAGES.get(_KINDS.get(tag, object), "unknown"),
        f"the {tag} fact does not read back: {salvage.describe_error(exc)}",
        fields={name: value for name, value in fields.items() if name != "stamp"},
    )
    when = dt.datetime.fromisoformat(stamp["time"])
    return salvage.invalid_of(said, Stamp(UUID(stamp["id"]), when, str(stamp["source"])))


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


def _move_responded(fact: MoveResponded) -> CloudEvent:
    return moves.response_event(
        fact.command, fact.association, fact.message_id, fact.response, fact.stamp
    )


def _pull_unsent(fact: PullUnsent) -> CloudEvent:
    reason: Any = fact.reason  # an UnsentReason, validated by the event's model
    return moves.unsent_event(fact.command, reason, fact.detail, fact.stamp)


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
    MoveResponded: _move_responded,
    PullUnsent: _pull_unsent,
    Refused: _refused,
}


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
    MoveResponded: "C-MOVE-RSP",
    PullUnsent: "C-MOVE-RQ",
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
        f"the {TAGS[type(fact)]} fact could not be made its event: {type(exc).__name__}: {error}",
        association_id=getattr(association, "id", None),
        operation=getattr(fact, "operation", None),
        fields={
            name: getattr(fact, name)
            for name in fact.__dataclass_fields__
            if name not in ("stamp", "association")
        },
    )
    return salvage.invalid_of(facts, fact.stamp)
