"""When the outbox relay publishes: at once when idle, else the rows that came meanwhile.

No timer decides. The relay has at most one batch out at a time. With nothing
awaiting a confirm, a row that arrives is published at once, alone; while a batch
awaits its confirms, the rows that arrive gather in the outbox and go out together
as the next batch the moment those confirms are in. This is group commit (and a
Kafka producer with one request in flight and no linger): a batch is as large as the
traffic of one confirm's round trip, so a quiet relay answers in about a round trip
and a busy one makes fewer, larger batches without anyone tuning a delay.

A confirm's round trip on loopback (about 1 ms) is shorter than the gap between
C-STOREs at full speed (2 to 3 ms), so at full speed that alone would publish each
row on its own, and a batch's fixed cost (its SQLite transactions, its socket
writes, the broker's work) would be paid per row: the relay used several times the
CPU per event of 250 ms batches, and took it from the DICOM side. So batches are
also spaced by what they cost, as network cards coalesce interrupts: the next one
starts no sooner than ``cost / DUTY`` after the last one started (at most
``MAX_GATHER`` later), whether its rows came while the last awaited its confirms or
woke the relay after, so the batches' own cost stays near a tenth of a core whatever
the rate. A relay idle for longer than that, or one behind (a full batch), never waits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DUTY = 0.1
"""The share of the time back-to-back batches may spend in their own CPU cost."""
MAX_GATHER = 0.005
"""Seconds a batch may wait for more rows, at most (the latency it may add)."""


class Step(enum.Enum):
    """What the relay does next."""

    PUBLISH = "publish"
    """Take the oldest rows (up to a batch) and publish them now."""
    GATHER = "gather"
    """The last batch was costly: let rows gather before the next (``gather_for``), then
    publish them, or wait for rows if none came (``after_gathering``)."""
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
    ``cost``: CPU seconds the last batch cost the relay; ``elapsed``: seconds since it
    was taken (its confirms' round trip included).
    """

    last_taken: int
    last_refused: int
    arrived: bool
    limit: int
    cost: float = 0.0
    elapsed: float = 0.0


def next_step(view: RelayView) -> Step:
    """The step after a settled batch: publish or gather the next one, wait, or back off.

    While the batch awaited its confirms, the relay did nothing else: that wait is
    where the next batch gathered, in the outbox.
    """
    if view.last_refused:
        return Step.BACK_OFF
    if view.last_taken >= view.limit:  # a backlog: behind, never wait
        return Step.PUBLISH
    if gather_for(view) > 0:  # rows that come meanwhile wait for the spacing anyway
        return Step.GATHER
    return Step.PUBLISH if view.arrived else Step.WAIT_FOR_ROWS


def after_gathering(view: RelayView, arrived: bool) -> Step:
    """The step after a gathering wait: publish what came (before it or during it), or
    wait for rows. Spacing first and looking after spares a busy relay the wake-up of
    the first row's ring: one wake-up (the spacing's end) instead of two."""
    return Step.PUBLISH if view.arrived or arrived else Step.WAIT_FOR_ROWS


def gather_for(view: RelayView) -> float:
    """Seconds the next batch waits for more rows: what the last one's cost asks, capped."""
    return min(MAX_GATHER, max(0.0, view.cost / DUTY - view.elapsed))
