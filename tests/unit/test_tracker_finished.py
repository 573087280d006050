"""The tracker's shell derives `dimsebus.move.finished` once per final outcome (issue 18).

Its SQLite store and outbox are real files; the events are the fold tests' own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import sequential_ids
from dimsebus.services.bus.log import LogEntry
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.resends import operator_retry
from dimsebus.services.tracker.app import Tracker, TrackerSettings
from dimsebus.services.tracker.progress import retry_commands
from dimsebus.services.tracker.store import open_store
from tests.unit.test_progress_final import UIDS, Events, fold, full_disk_story, result


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Closes what a test opened (the trackers' stores and outboxes) after it."""
    with contextlib.ExitStack() as stack:
        yield stack


def tracker(cleanup: contextlib.ExitStack, tmp_path: Path, name: str, **extra: object) -> Tracker:
    settings = TrackerSettings(
        db=str(tmp_path / f"{name}.sqlite"),
        outbox_path=tmp_path / f"{name}-outbox.sqlite",
        progress_interval=3600,
        **extra,  # type: ignore[arg-type]
    )
    store, outbox = open_store(settings.db), Outbox(settings.outbox_path)
    cleanup.callback(store.close)
    cleanup.callback(outbox.close)
    return Tracker(settings, store, outbox)


def feed(t: Tracker, events: list[CloudEvent], first_offset: int = 0) -> list[CloudEvent]:
    """Each event as its own batch, as a live tracker would usually see them."""
    derived: list[CloudEvent] = []
    for offset, event in enumerate(events, start=first_offset):
        entry = LogEntry(offset, event.type, event)  # type: ignore[arg-type]
        derived += t.handle([entry], event.time + dt.timedelta(milliseconds=5))
    return derived


def finished(events: list[CloudEvent]) -> list[ev.MoveFinished]:
    return [e for e in events if isinstance(e, ev.MoveFinished)]


def scenario() -> list[CloudEvent]:
    """Failures before the retrier's decision; the retries succeed."""
    story = full_disk_story(Events())
    return [*story["first"], *story["scheduled"], *story["retried"]]


def given_up_then_retried() -> list[CloudEvent]:
    """The retrier gives up on the failures; later an operator's retry of them succeeds."""
    e = Events()
    story = full_disk_story(e)
    gave_up = e.decided(UIDS[2:], attempt=1, gave_up=True)
    announced = e.decided(UIDS[2:], attempt=2)  # as `moves retry` announces its resend
    manual = [e.stored(UIDS[2], 0, attempt=2), e.stored(UIDS[3], 0, attempt=2)]
    return [*story["first"], gave_up, announced, *manual]


def test_failures_awaiting_the_retrier_publish_one_finished(
    cleanup: contextlib.ExitStack, tmp_path: Path
) -> None:
    # given a tracker that knows a retrier decides about this node's failures
    t = tracker(cleanup, tmp_path, "t", retries=True)
    events = scenario()
    # when the failures arrive before the retrier's decision, then the retries succeed
    derived = finished(feed(t, events))
    # then exactly one finished, completed, revision 1
    assert [(f.data.outcome, f.data.revision) for f in derived] == [("completed", 1)]


def test_without_retries_configured_failures_are_final_at_once(
    cleanup: contextlib.ExitStack, tmp_path: Path
) -> None:
    t = tracker(cleanup, tmp_path, "t", retries_by_node={"n1": False}, retries=True)
    derived = finished(feed(t, scenario()))
    # the failures were final (revision 1); the retries that came anyway changed it (revision 2)
    assert [(f.data.outcome, f.data.revision) for f in derived] == [
        ("completed_with_failures", 1),
        ("completed", 2),
    ]


def test_revisions_survive_a_restart_and_a_replay_derives_the_same_ids(
    cleanup: contextlib.ExitStack, tmp_path: Path
) -> None:
    events = given_up_then_retried()
    # given a tracker that finished the move with failures (given up), then stopped
    first = tracker(cleanup, tmp_path, "t", retries=True)
    before = finished(feed(first, events[:-3]))
    first.store.close()
    # when it starts again from its store and an operator's retry succeeds
    again = tracker(cleanup, tmp_path, "t", retries=True)
    after = finished(feed(again, events[-3:], first_offset=len(events) - 3))
    # then the change is revision 2, not a second revision 1
    assert [(f.data.outcome, f.data.revision) for f in before + after] == [
        ("completed_with_failures", 1),
        ("completed", 2),
    ]
    # and a replay into a new store derives the same events, with the same ids
    replay = finished(feed(tracker(cleanup, tmp_path, "replay", retries=True), events))
    assert [f.id for f in replay] == [f.id for f in before + after]
    # and the same events again (a redelivery) derive nothing
    assert finished(feed(again, events, first_offset=len(events))) == []


def test_an_operators_retry_is_announced_and_keeps_the_move_retrying() -> None:
    # given a move finished with failures the retrier gave up on
    e = Events()
    story = full_disk_story(e)
    move = fold([*story["first"], e.decided(UIDS[2:], attempt=1, gave_up=True)], retries_on=True)
    assert result(move) == "completed_with_failures"
    # when an operator retries it (`dimsebus moves retry`)
    now = e.clock + dt.timedelta(seconds=1)
    commands = retry_commands(move, "dimsebus://cli/t", now, sequential_ids(900))
    announced = [operator_retry(command) for command in commands]
    # then each resend is announced as a retry of the next attempt, and the move is retrying
    assert [a.data.attempt for a in announced] == [2]
    assert set(announced[0].data.sop_instance_uids) == set(UIDS[2:])
    retried = fold([*story["first"], e.decided(UIDS[2:], attempt=1, gave_up=True), *announced])
    assert result(retried) == "retrying"
    # and the same command announced twice is the same event
    assert operator_retry(commands[0]).id == announced[0].id
