"""What the retrier's handler needs of the world: a store of decisions and a way out for them.

Small interfaces (``typing.Protocol``), so ``Retrier.handle`` runs against the SQL
store and RabbitMQ in the service, and against in-memory fakes in unit tests. The
store is synchronous (``RetryStore``); the handler calls it in a worker thread.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol
from uuid import UUID

from dimsebus.schemas import events as ev
from dimsebus.services.retrier.decisions import RetryItem


class DecisionStore(Protocol):
    """Decisions by id: what makes each one happen once (``RetryStore``)."""

    def get(self, item_id: UUID) -> RetryItem | None:
        """The decision with ``item_id``, if any."""
        ...

    def add(self, item: RetryItem) -> RetryItem:
        """Record ``item`` unless a decision with its id exists; return the one recorded."""
        ...

    def claim(self, item_id: UUID, holder: str, now: dt.datetime, lease: dt.timedelta) -> bool:
        """Make ``holder`` the publisher of an unpublished decision no one else holds."""
        ...

    def release(self, item_id: UUID, holder: str) -> None:
        """``holder`` could not publish the decision: let anyone claim it at once."""
        ...

    def mark_published(self, item_id: UUID) -> None:
        """The decision's event and command are confirmed by the broker."""
        ...


class DecisionOutlet(Protocol):
    """Where decisions go: their events to the log, their resends to the delay queues."""

    async def announce(self, event: ev.RetryScheduled | ev.RetryExhausted, node_id: str) -> None:
        """Publish a decision's event (confirmed), ``node_id``'s command queue declared."""
        ...

    async def schedule(
        self, command: ev.ResendSubOperations, step_ms: int, delay: dt.timedelta
    ) -> None:
        """Publish a resend that waits ``delay`` in the delay step ``step_ms``, then goes on."""
        ...
