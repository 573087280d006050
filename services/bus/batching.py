"""When the outbox relay publishes: at once when idle, else the rows that came meanwhile.

No timer decides. The relay has at most one batch out at a time. With nothing
awaiting a confirm, a row that arrives is published at once, alone; while a batch
awaits its confirms, the rows that arrive gather in the outbox and go out together
as the next batch the moment those confirms are in. This is group commit (and a
Kafka producer with one request in flight and no linger): a batch is as large as the
traffic of one confirm's round trip, so a quiet relay answers in about a round trip
and a busy one makes fewer, larger batches without anyone tuning a delay.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Step(enum.Enum):
    """What the relay does next."""

    PUBLISH = "publish"
    """Take the oldest rows (up to a batch) and publish them now."""
    WAIT_FOR_ROWS = "wait for rows"
    """Nothing to publish: sleep until a row's wake-up, or the safety poll."""
    BACK_OFF = "back off"
    """The broker refused some of the last batch: wait before taking those rows again."""


@dataclass(frozen=True, slots=True)
class RelayView:
    """What the relay knows when its last batch is settled (every confirm in, or not).

    ``last_taken``: rows the last batch took (``limit`` of them means there were more).
    ``last_refused``: rows of it that the broker did not confirm.
    ``arrived``: a row's wake-up came since the last batch was taken.
    """

    last_taken: int
    last_refused: int
    arrived: bool
    limit: int


def next_step(view: RelayView) -> Step:
    """The step after a settled batch: publish the next one, wait for rows or back off.

    While the batch awaited its confirms, the relay did nothing else: that wait is
    where the next batch gathered, in the outbox.
    """
    if view.last_refused:
        return Step.BACK_OFF
    if view.arrived or view.last_taken >= view.limit:  # new rows, or a backlog left
        return Step.PUBLISH
    return Step.WAIT_FOR_ROWS
