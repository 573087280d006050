"""The outbox spools durably, in order, once per event id, from many threads."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.bus.outbox import Outbox, Record, read_depth


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    """An outbox in the test's folder, closed (with its wake-up socket) after the test."""
    outbox = Outbox(tmp_path / "outbox.sqlite")
    yield outbox
    outbox.close()


EVENTS = move_story(
    node_id="n1", start=dt.datetime(2026, 11, 26, tzinfo=dt.UTC), ids=sequential_ids()
)


def test_rows_come_back_oldest_first_and_survive_reopening(tmp_path: Path) -> None:
    # given events appended to an outbox that is then closed
    box = Outbox(tmp_path / "outbox.sqlite")
    box.append(EVENTS[:5])
    box.close()
    # when it is opened again
    reopened = Outbox(tmp_path / "outbox.sqlite")
    rows = reopened.peek(10)
    reopened.close()
    # then the same events are there, in order, ready to publish as they were
    assert [row.event_id for row in rows] == [str(e.id) for e in EVENTS[:5]]
    assert [row.routing_key for row in rows] == [e.routing_key for e in EVENTS[:5]]
    assert rows[0].body == EVENTS[0].model_dump_json().encode()
    assert read_depth(tmp_path / "outbox.sqlite") == 5


def test_an_event_id_is_spooled_once(box: Outbox) -> None:
    box.append(EVENTS[:3])
    box.append(EVENTS[:3])
    assert box.depth() == 3


def test_remove_forgets_only_confirmed_rows(box: Outbox) -> None:
    box.append(EVENTS[:4])
    rows = box.peek(4)
    box.remove([rows[0].seq, rows[2].seq])
    assert [row.event_id for row in box.peek(4)] == [str(EVENTS[1].id), str(EVENTS[3].id)]


def test_appends_from_many_threads_all_land(box: Outbox) -> None:
    threads = [threading.Thread(target=box.append, args=([event],)) for event in EVENTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert box.depth() == len(EVENTS)


def test_depth_of_a_missing_file_is_zero(tmp_path: Path) -> None:
    assert read_depth(tmp_path / "nothing.sqlite") == 0


def test_a_record_is_spooled_with_its_format_for_the_relay(box: Outbox) -> None:
    # given an event, then the facts of another recorded in a format its relay reads
    box.append(EVENTS[:1])
    record = Record(
        format="example/1",
        event_id=str(EVENTS[1].id),
        type=EVENTS[1].type,
        correlation_id=EVENTS[1].correlation_id,
        time=EVENTS[1].time.isoformat(),
        subject=EVENTS[1].subject,
        body=b'{"facts": 1}',
    )
    box.append_record(record)
    # then both wait in order, the record as it was given
    plain, recorded = box.peek(10)
    assert (plain.format, plain.body) == (None, EVENTS[0].model_dump_json().encode())
    assert (recorded.format, recorded.body, recorded.event_id) == (
        "example/1",
        b'{"facts": 1}',
        str(EVENTS[1].id),
    )
    assert box.depth() == 2


def test_take_hands_out_the_oldest_rows_and_notes_them_in_flight(box: Outbox) -> None:
    # given six events, the oldest three taken for a first publish that was cut off
    box.append(EVENTS[:6])
    first, later = dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC), dt.datetime(2026, 11, 30, 10)
    assert [row.event_id for row in box.take(3, first)] == [str(e.id) for e in EVENTS[:3]]
    # when the next relay takes four, then
    taken = box.take(4, later.replace(tzinfo=dt.UTC))
    # they are the oldest four, in order, exactly what peek shows
    assert taken == box.peek(4)
    # and in flight are those four, since the first one's time (kept, not moved on)
    in_flight, since = box.in_flight()
    assert sorted(in_flight) == [row.seq for row in taken]
    assert since == first


def test_skipped_rows_stay_spooled_out_of_later_takes_and_not_in_flight(box: Outbox) -> None:
    # given four events, the first two taken, then skipped (their relay cannot make them)
    box.append(EVENTS[:4])
    first = box.take(2, dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC))
    box.skip([row.seq for row in first])
    # when the next batch is taken, then it is the two after them
    later = box.take(4, dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC))
    assert [row.event_id for row in later] == [str(e.id) for e in EVENTS[2:4]]
    # and the skipped ones are still spooled, not in flight (never sent)
    assert box.depth() == 4
    assert sorted(box.in_flight()[0]) == [row.seq for row in later]
    # and another outbox object on the file (a relay started later) takes them again
    other = Outbox(box.path)
    assert [row.seq for row in other.take(2, dt.datetime(2026, 11, 30, 11, tzinfo=dt.UTC))] == [
        row.seq for row in first
    ]
    other.close()
