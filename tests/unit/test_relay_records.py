"""The relay makes the events of recorded rows, and leaves spooled what it cannot read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import Outbox, OutboxRow
from dimsebus.services.bus.relay import OutboxRelay, UnreadableRecord

EVENT = move_story(
    node_id="n1", start=dt.datetime(2026, 11, 26, tzinfo=dt.UTC), ids=sequential_ids()
)[0]


def row(format: str, event_id: str = str(EVENT.id)) -> OutboxRow:
    time = EVENT.time.isoformat()
    return OutboxRow(7, event_id, EVENT.type, EVENT.type, None, time, b"{}", format)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    opened = Outbox(tmp_path / "outbox.sqlite")
    yield opened
    opened.close()


def relay(outbox: Outbox, make: Callable[[OutboxRow], CloudEvent]) -> OutboxRelay:
    """A relay (never connected) of ``outbox`` that reads ``example/1`` records with ``make``."""
    return OutboxRelay(outbox, "amqp://unused/", name="test", formats={"example/1": make})


def test_a_record_becomes_the_event_its_format_makes(outbox: Outbox) -> None:
    assert relay(outbox, lambda _: EVENT)._event_of(row("example/1")) == EVENT


def test_a_format_the_relay_does_not_read_names_the_row_and_the_format(outbox: Outbox) -> None:
    with pytest.raises(UnreadableRecord, match=r"row 7 .*'other/2' record.*reads only"):
        relay(outbox, lambda _: EVENT)._event_of(row("other/2"))


def test_a_record_that_cannot_be_read_says_why(outbox: Outbox) -> None:
    def broken(_: OutboxRow) -> CloudEvent:
        raise KeyError("exchange")

    with pytest.raises(UnreadableRecord, match=r"row 7 .*KeyError: 'exchange'"):
        relay(outbox, broken)._event_of(row("example/1"))


def test_an_event_made_under_another_id_is_refused(outbox: Outbox) -> None:
    other = "00000000-0000-4000-8000-000000000001"
    with pytest.raises(UnreadableRecord, match="another id"):
        relay(outbox, lambda _: EVENT)._event_of(row("example/1", other))
