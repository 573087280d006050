"""The invariant of every fault scenario, as a pure count (issue #8).

    responses the peers sent = distinct response events on the log = the tracker's count

A response is known to the peer by its SOP instance UID (and how many times it
answered that UID); to the log by its event id, and logically by (association,
message id). Lost, duplicated and unexpected events are counted apart, so a
failing scenario says which way it failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent


@dataclass(frozen=True, slots=True)
class Tally:
    """One scenario's accounting: what the peers answered and what the log holds."""

    scenario: str
    injected: str
    expected: int  # responses the peers sent
    received: int  # distinct response events on the log that match one of them
    lost: int  # responses sent with no event (not explained by a crash)
    duplicated: int  # events on the log more than once, or two events for one response
    unexpected: int  # events for responses no peer sent
    cut_off: int = 0  # sent in the instant the node was killed, reported unsent instead
    tracker: int | None = None  # response events the tracker folded

    @property
    def exact(self) -> bool:
        """The invariant holds: nothing lost, duplicated or unexpected; the tracker agrees."""
        return (
            self.lost == self.duplicated == self.unexpected == 0
            and self.received + self.cut_off == self.expected
            and self.tracker in (None, self.received)
        )

    def row(self) -> tuple[str, ...]:
        """The README's Reliability table row."""
        tracked = "-" if self.tracker is None else str(self.tracker)
        return (
            self.scenario,
            self.injected,
            str(self.expected),
            str(self.received) + (f" (+{self.cut_off} cut off)" if self.cut_off else ""),
            str(self.lost),
            str(self.duplicated),
            str(self.unexpected),
            tracked,
        )


def _response_facts(event: CloudEvent) -> ev.CStoreRequestFacts | None:
    """The request a response answered: received, or missing for want of a usable Status."""
    if isinstance(event, ev.CStoreResponseReceived):
        return event.data
    if isinstance(event, ev.CStoreResponseMissing) and event.data.reason == "invalid_response":
        return event.data
    return None


def tally(
    scenario: str,
    injected: str,
    answered: Iterable[str],
    log: Sequence[CloudEvent],
    *,
    tracker: int | None = None,
    cut_off: Iterable[str] = (),
) -> Tally:
    """Compare the UIDs the peers answered (once per answer) with the log's response events.

    ``log`` is every entry read from the stream, repeats included; ``cut_off`` are
    UIDs the node reported unsent because it was killed: an answer sent for one
    of them in that instant is not counted as lost.
    """
    responses = [(e.id, facts) for e in log if (facts := _response_facts(e)) is not None]
    by_id = Counter(event_id for event_id, _ in responses)
    distinct = dict(responses).values()
    by_key = Counter((facts.association.id, facts.message_id) for facts in distinct)
    duplicated = sum(n - 1 for n in by_id.values()) + sum(n - 1 for n in by_key.values())
    sent = Counter(answered)
    logged = Counter(facts.affected_sop_instance_uid for facts in distinct)
    excused = set(cut_off)
    short = {uid: sent[uid] - logged[uid] for uid in sent if sent[uid] > logged[uid]}
    return Tally(
        scenario=scenario,
        injected=injected,
        expected=sum(sent.values()),
        received=sum(min(sent[uid], logged[uid]) for uid in logged),
        lost=sum(n for uid, n in short.items() if uid not in excused)
        + sum(max(n - 1, 0) for uid, n in short.items() if uid in excused),
        duplicated=duplicated,
        unexpected=sum(max(logged[uid] - sent[uid], 0) for uid in logged),
        cut_off=sum(min(n, 1) for uid, n in short.items() if uid in excused),
        tracker=tracker,
    )
