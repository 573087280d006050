"""``Retrier.handle`` against in-memory fakes of its store and outlet: no broker, no files.

The fakes are real implementations of ``dimsebus.services.retrier.ports``: decisions in a
dict, and what would go to RabbitMQ in two lists (announced events, scheduled
resends), so each test reads as what the retrier decided and what it sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from uuid import UUID

import pytest

from dimsebus.schemas import events as ev
from dimsebus.services.retrier.app import Retrier, RetrierSettings
from dimsebus.services.retrier.decisions import RetryItem
from dimsebus.services.retrier.policy import RetryPolicy
from dimsebus.services.retrier.ports import DecisionOutlet, DecisionStore
from tests.unit.test_retry_policy import T0, missing, received, unsent

POLICY = RetryPolicy(max_attempts=3, initial_delay=10, multiplier=2, max_delay=60, jitter=0.0)


class MemoryDecisions:
    """Decisions by id in a dict; notes the threads it was called on."""

    def __init__(self) -> None:
        self.items: dict[UUID, RetryItem] = {}
        self.claims: dict[UUID, tuple[str, dt.datetime]] = {}
        self.threads: set[int] = set()

    def get(self, item_id: UUID) -> RetryItem | None:
        self.threads.add(threading.get_ident())
        return self.items.get(item_id)

    def add(self, item: RetryItem) -> RetryItem:
        self.threads.add(threading.get_ident())
        return self.items.setdefault(item.id, item)

    def claim(self, item_id: UUID, holder: str, now: dt.datetime, lease: dt.timedelta) -> bool:
        self.threads.add(threading.get_ident())
        held = self.claims.get(item_id)
        if self.items[item_id].published or (held and held[1] > now - lease):
            return False
        self.claims[item_id] = (holder, now)
        return True

    def release(self, item_id: UUID, holder: str) -> None:
        self.threads.add(threading.get_ident())
        if self.claims.get(item_id, ("",))[0] == holder:
            del self.claims[item_id]

    def mark_published(self, item_id: UUID) -> None:
        self.threads.add(threading.get_ident())
        item = self.items[item_id]
        self.items[item_id] = dataclasses.replace(item, published=True)


class MemoryOutlet:
    """What would go to the broker, in order; ``fail`` makes the next publish fail."""

    def __init__(self) -> None:
        self.announced: list[tuple[ev.RetryScheduled | ev.RetryExhausted, str]] = []
        self.scheduled: list[tuple[ev.ResendSubOperations, int, dt.timedelta]] = []
        self.fail = False

    async def announce(self, event: ev.RetryScheduled | ev.RetryExhausted, node_id: str) -> None:
        if self.fail:
            self.fail = False
            raise ConnectionError("the channel closed")
        self.announced.append((event, node_id))

    async def schedule(
        self, command: ev.ResendSubOperations, step_ms: int, delay: dt.timedelta
    ) -> None:
        self.scheduled.append((command, step_ms, delay))


def retrier(store: DecisionStore, outlet: DecisionOutlet) -> Retrier:
    """A retrier over the fakes, its clock at T0 and its jitter draw in the middle."""
    settings = RetrierSettings(retrier_id="r1", policy=POLICY)
    return Retrier(settings, store, outlet, draw=lambda: 0.5, clock=lambda: T0)


async def test_a_transient_failure_is_scheduled_and_its_resend_delayed() -> None:
    # given a retrier over empty fakes
    store, outlet = MemoryDecisions(), MemoryOutlet()
    # when a sub-operation failed with 0xA700 (out of resources) on its first attempt
    failed = received(0xA700)
    await retrier(store, outlet).handle(failed)
    # then it announced a scheduled retry of attempt 2, to the node that served the move
    [(event, node_id)] = outlet.announced
    assert isinstance(event, ev.RetryScheduled)
    assert node_id == "n1"
    assert event.data.attempt == 2
    assert event.data.sop_instance_uids == (failed.data.affected_sop_instance_uid,)
    # and the resend waits the policy's first delay in the 10 s step's delay queue
    [(command, step_ms, delay)] = outlet.scheduled
    assert (step_ms, delay) == (10_000, dt.timedelta(seconds=10))
    assert command.data.attempt == 2
    assert command.data.operation == failed.data.operation
    # and the decision is recorded as scheduled and published
    [item] = store.items.values()
    assert (item.state, item.published, item.command) == ("scheduled", True, command)


@pytest.mark.parametrize(
    ("event", "reason"),
    [(received(0xA900), "0xA900"), (unsent("unknown_destination"), "unknown_destination")],
)
async def test_a_permanent_failure_is_given_up_and_nothing_is_resent(
    event: ev.Event, reason: str
) -> None:
    store, outlet = MemoryDecisions(), MemoryOutlet()
    await retrier(store, outlet).handle(event)
    [(exhausted, _)] = outlet.announced
    assert isinstance(exhausted, ev.RetryExhausted)
    assert reason in exhausted.data.reason
    assert outlet.scheduled == []
    [item] = store.items.values()
    assert (item.state, item.published) == ("parked", True)


async def test_the_last_attempt_is_given_up() -> None:
    store, outlet = MemoryDecisions(), MemoryOutlet()
    # when attempt 3 of 3 fails as well
    await retrier(store, outlet).handle(received(0xA700, attempt=3))
    # then the retrier gives up, naming the attempt that failed
    [(exhausted, _)] = outlet.announced
    assert isinstance(exhausted, ev.RetryExhausted)
    assert exhausted.data.attempt == 3
    assert outlet.scheduled == []


async def test_a_redelivered_failure_is_decided_and_published_once() -> None:
    # given a failure decided and published
    store, outlet = MemoryDecisions(), MemoryOutlet()
    handler = retrier(store, outlet)
    await handler.handle(missing())
    # when the same event comes again (a redelivery), to this retrier or a restarted one
    await handler.handle(missing())
    await retrier(store, outlet).handle(missing())
    # then nothing more is published, and there is still one decision
    assert len(outlet.announced) == 1
    assert len(outlet.scheduled) == 1
    assert len(store.items) == 1


async def test_a_decision_not_yet_published_is_published_as_decided_on_redelivery() -> None:
    # given the broker failed while the decision was being published
    store, outlet = MemoryDecisions(), MemoryOutlet()
    outlet.fail = True
    with pytest.raises(ConnectionError):
        await retrier(store, outlet).handle(received(0xA700))
    [decided] = store.items.values()
    assert not decided.published
    # when the event is redelivered later, with another clock and another draw
    later = Retrier(
        RetrierSettings(retrier_id="r1", policy=POLICY),
        store,
        outlet,
        draw=lambda: 0.99,
        clock=lambda: T0 + dt.timedelta(seconds=4),
    )
    await later.handle(received(0xA700))
    # then the recorded decision is published, not a new one: same ids, same due time
    [(event, _)] = outlet.announced
    [(command, _, delay)] = outlet.scheduled
    assert command == decided.command
    assert event.data.retry_at == decided.retry_at
    assert delay == dt.timedelta(seconds=6)  # what is left of the 10 s
    assert store.items[decided.id].published


async def test_successes_and_other_events_decide_nothing() -> None:
    store, outlet = MemoryDecisions(), MemoryOutlet()
    await retrier(store, outlet).handle(received(0))
    assert (store.items, outlet.announced, outlet.scheduled) == ({}, [], [])


async def test_the_store_is_called_off_the_event_loop() -> None:
    store, outlet = MemoryDecisions(), MemoryOutlet()
    loop_thread = threading.get_ident()
    await retrier(store, outlet).handle(received(0xA700))
    assert store.threads
    assert loop_thread not in store.threads
