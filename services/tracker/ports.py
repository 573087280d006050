"""What the tracker's handler needs of the world: a store for moves and a spool for events.

Small interfaces (``typing.Protocol``), so ``Tracker.handle`` runs against the SQL
store and the outbox in the service, and against in-memory fakes in unit tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.tracker.progress import MoveKey, MoveState
from dimsebus.services.tracker.store import Rejected


class MoveStore(Protocol):
    """Moves by key, and the log offset they were folded up to (``TrackerStore``)."""

    def checkpoint(self) -> int | None:
        """The offset of the last event applied, or None before the first."""
        ...

    def load(self, key: MoveKey) -> MoveState | None:
        """One move's state."""
        ...

    def save(
        self,
        moves: Iterable[MoveState],
        offset: int,
        rejected: Iterable[Rejected] = (),
        before: Mapping[MoveKey, MoveState | None] | None = None,
        folded: Mapping[MoveKey, Sequence[CloudEvent]] | None = None,
    ) -> None:
        """Store changed moves, skipped entries and the new checkpoint in one transaction;
        with ``before`` (each move as last saved), only what changed since, looked for
        among what ``folded`` (the events folded into each move since) names."""
        ...

    def close(self) -> None:
        """Let go of the database."""
        ...


class EventSpool(Protocol):
    """Where derived events wait to be published (``Outbox``; its relay publishes them)."""

    def append(self, events: Iterable[CloudEvent]) -> None:
        """Spool events durably; a repeated event id is ignored."""
        ...
