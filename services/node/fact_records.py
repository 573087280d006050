"""The outbox record of a fact: what pynetdicom's threads append (``Outbox.append_record``).

``dimsebus.services.node.facts`` says what a fact is (``fact_events`` makes its event); this is the
shell's side, the row the outbox keeps of it: the fact, encoded, beside its event's
id and time and what the move journal reads (type, operation, subject).
"""

from __future__ import annotations

from collections.abc import Iterable

from dimsebus.services.bus.outbox import Record
from dimsebus.services.node import facts
from dimsebus.services.node.facts import Fact


def record_of(fact: Fact) -> Record:
    """The outbox record of ``fact`` (a ``PairRecord``'s is made by ``storepair``)."""
    type_, correlation_id, subject = facts.heading(fact)
    stamp = fact.stamp  # type: ignore[union-attr]  # heading refused a PairRecord
    return Record(
        format=facts.FORMAT,
        event_id=str(stamp.id),
        type=type_,
        correlation_id=correlation_id,
        time=stamp.time.isoformat(),
        subject=subject,
        body=facts.encode(fact),
    )


def records_of(noted: Iterable[Fact]) -> list[Record]:
    """The outbox records of ``noted``, in order."""
    return [record_of(fact) for fact in noted]
