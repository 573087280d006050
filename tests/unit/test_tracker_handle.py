"""``Tracker.handle`` against in-memory fakes of its store and spool: no broker, no files.

The fakes are real implementations of ``dimsebus.services.tracker.ports`` (a dict and a list),
so each test reads as what the tracker committed and what it spooled to publish.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.log import LogEntry
from dimsebus.services.tracker.app import Tracker, resume_point
from dimsebus.services.tracker.ports import EventSpool, MoveStore
from dimsebus.services.tracker.progress import MoveKey, MoveState, named_instances
from dimsebus.services.tracker.settings import TrackerSettings
from dimsebus.services.tracker.store import Rejected
from tests.unit.test_progress_final import MOVE, NODE, UIDS, Events, full_disk_story


class MemoryMoves:
    """Moves in a dict; the checkpoint and the rejected entries beside them."""

    def __init__(self) -> None:
        self.moves: dict[MoveKey, MoveState] = {}
        self.offset: int | None = None
        self.rejected: list[Rejected] = []
        self.commits = 0

    def checkpoint(self) -> int | None:
        return self.offset

    def load(self, key: MoveKey) -> MoveState | None:
        return self.moves.get(key)

    def save(
        self,
        moves: Iterable[MoveState],
        offset: int,
        rejected: Iterable[Rejected] = (),
        before: Mapping[MoveKey, MoveState | None] | None = None,
        folded: Mapping[MoveKey, Sequence[CloudEvent]] | None = None,
    ) -> None:
        if before is not None:  # as the tracker last had each move: as committed here
            assert all(self.moves.get(key) == move for key, move in before.items())
        for move in moves:  # and what changed is among what the events folded name
            key = (move.source, move.move_id)
            old = before.get(key) if before is not None else None
            if old is not None and folded is not None:
                named = {uid for event in folded[key] for uid in named_instances(event)}
                changed = {u for u, o in move.instances.items() if o is not old.instances.get(u)}
                assert changed <= named
                assert move.seen - old.seen <= {event.id for event in folded[key]}
        self.moves.update({(move.source, move.move_id): move for move in moves})
        self.rejected += rejected
        self.offset = offset
        self.commits += 1

    def close(self) -> None:
        pass


class MemorySpool:
    """Spooled events in order; a repeated id is ignored, as the outbox does."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    def append(self, events: Iterable[CloudEvent]) -> None:
        known = {e.id for e in self.events}
        self.events += [e for e in events if e.id not in known]


class BrokenSpool:
    """A spool whose disk is full."""

    def append(self, events: Iterable[CloudEvent]) -> None:
        raise OSError("database or disk is full")


KEY = (NODE, MOVE.id)


def tracker(store: MoveStore, spool: EventSpool, **settings: object) -> Tracker:
    """A tracker over ``store`` and ``spool`` (mypy checks the fakes against the ports)."""
    chosen = TrackerSettings.model_validate({"progress_interval": 3600, **settings})
    return Tracker(chosen, store, spool)


def entries(events: list[CloudEvent], first: int = 0) -> list[LogEntry]:
    return [LogEntry(offset, e.type, e) for offset, e in enumerate(events, start=first)]  # type: ignore[arg-type]


def story() -> list[CloudEvent]:
    """Two of four instances refused; the move's final response; nobody retries."""
    return full_disk_story(Events())["first"]


def just_after(events: list[CloudEvent]) -> dt.datetime:
    return events[-1].time + dt.timedelta(milliseconds=5)


def finished(events: Iterable[CloudEvent]) -> list[ev.MoveFinished]:
    return [e for e in events if isinstance(e, ev.MoveFinished)]


def test_a_finished_move_is_spooled_once_and_committed_with_its_offset() -> None:
    # given a tracker over empty fakes
    store, spool = MemoryMoves(), MemorySpool()
    t = tracker(store, spool)
    events = story()
    # when the move's events come one batch each
    for entry in entries(events):
        t.handle([entry], just_after(events))
    # then one finished was spooled, with the move's outcome and counts
    [done] = finished(spool.events)
    assert (done.data.outcome, done.data.revision) == ("completed_with_failures", 1)
    assert (done.data.counts.completed, done.data.counts.failed) == (2, 2)
    # and the move was committed with the last offset, once per batch
    assert store.offset == len(events) - 1
    assert store.commits == len(events)
    assert store.moves[KEY].finished is not None
    assert len(store.moves[KEY].seen) == len(events)


def test_a_redelivered_batch_derives_nothing_and_changes_no_move() -> None:
    # given a tracker that folded the whole move in one batch
    store, spool = MemoryMoves(), MemorySpool()
    t = tracker(store, spool)
    batch = entries(story())
    first = t.handle(batch, just_after(story()))
    assert len(finished(first)) == 1
    move = store.moves[KEY]
    # when the same entries come again (a redelivery after a lost ack)
    again = t.handle(batch, just_after(story()))
    # then nothing is derived and the move is as it was
    assert again == []
    assert store.moves[KEY] == move
    assert len(finished(spool.events)) == 1


def test_a_restarted_tracker_replaying_the_log_publishes_no_second_finished() -> None:
    # given the move finished, committed by a tracker that then stopped
    store, spool = MemoryMoves(), MemorySpool()
    events = story()
    tracker(store, spool).handle(entries(events), just_after(events))
    # when a new tracker over the same store reads the log again from the start
    replayed = tracker(store, spool).handle(entries(events), just_after(events))
    # then it derives nothing: the events are in the move's state already
    assert finished(replayed) == []
    assert len(finished(spool.events)) == 1


def test_a_later_final_outcome_is_a_new_revision() -> None:
    # given a move finished with failures, with a retrier configured for its node
    e = Events()
    told = full_disk_story(e)
    store, spool = MemoryMoves(), MemorySpool()
    t = tracker(store, spool, retries=True)
    gave_up = e.decided(UIDS[2:], attempt=1, gave_up=True)
    first = [*told["first"], gave_up]
    t.handle(entries(first), just_after(first))
    # when an operator's retry of the failures succeeds later
    later = [e.decided(UIDS[2:], attempt=2), e.stored(UIDS[2], 0, 2), e.stored(UIDS[3], 0, 2)]
    t.handle(entries(later, first=len(first)), just_after(later))
    # then a second finished says so, as revision 2, with an id of its own
    outcomes = [(f.data.outcome, f.data.revision) for f in finished(spool.events)]
    assert outcomes == [("completed_with_failures", 1), ("completed", 2)]
    assert len({f.id for f in finished(spool.events)}) == 2


def test_an_entry_that_is_not_an_event_is_recorded_and_skipped() -> None:
    store, spool = MemoryMoves(), MemorySpool()
    events = story()
    batch = [*entries(events), LogEntry(len(events), "junk", None, "not the contract")]
    # when a batch ends with a log entry that is not a valid event
    tracker(store, spool).handle(batch, just_after(events))
    # then it is recorded with its offset and reason, and the checkpoint passes it
    assert store.rejected == [Rejected(len(events), "junk", "not the contract")]
    assert store.offset == len(events)
    assert len(finished(spool.events)) == 1


def test_progress_is_spooled_for_live_events_not_for_a_replay_of_old_ones() -> None:
    events = full_disk_story(Events())["first"][:2]  # two stored, no final response yet
    # given a tracker that publishes progress at every change of live moves
    live_store, live_spool = MemoryMoves(), MemorySpool()
    tracker(live_store, live_spool, progress_interval=0).handle(entries(events), just_after(events))
    # then a live move's progress is spooled, once per change
    assert [type(e) for e in live_spool.events] == [ev.MoveProgressed] * len(events)
    # when the same events are a day old (a replay), no progress is spooled
    old_store, old_spool = MemoryMoves(), MemorySpool()
    a_day_later = just_after(events) + dt.timedelta(days=1)
    tracker(old_store, old_spool, progress_interval=0).handle(entries(events), a_day_later)
    assert old_spool.events == []
    assert old_store.moves[KEY] == live_store.moves[KEY]


def test_nothing_is_committed_when_the_spool_fails() -> None:
    # given a spool that cannot write
    store = MemoryMoves()
    events = story()
    # when the batch derives a finished it cannot spool
    with pytest.raises(OSError, match="disk is full"):
        tracker(store, BrokenSpool()).handle(entries(events), just_after(events))
    # then neither the move nor the checkpoint is committed: the batch is read again
    assert store.offset is None
    assert store.moves == {}


def test_a_finished_move_leaves_memory_and_a_late_event_folds_from_the_store() -> None:
    # given a move finished with failures, a retrier configured for its node
    e = Events()
    told = full_disk_story(e)
    store, spool = MemoryMoves(), MemorySpool()
    t = tracker(store, spool, retries=True)
    first = [*told["first"], e.decided(UIDS[2:], attempt=1, gave_up=True)]
    t.handle(entries(first), just_after(first))
    # then the tracker keeps nothing of it in memory
    assert t.cached == 0
    # when the late successes of an operator's retry come, one batch each
    later = [e.decided(UIDS[2:], attempt=2), e.stored(UIDS[2], 0, 2), e.stored(UIDS[3], 0, 2)]
    for entry in entries(later, first=len(first)):
        t.handle([entry], just_after(later))
    # then they fold into the stored move: revision 2, every event seen once
    outcomes = [(f.data.outcome, f.data.revision) for f in finished(spool.events)]
    assert outcomes == [("completed_with_failures", 1), ("completed", 2)]
    assert len(store.moves[KEY].seen) == len(first) + len(later)
    assert t.cached == 0


def test_open_moves_beyond_the_cache_fold_as_if_all_were_kept() -> None:
    # given the same events, one batch each, to a tracker that keeps moves and one that
    # keeps none (every event loads its move back from the store)
    events = story()
    kept_store, kept_spool = MemoryMoves(), MemorySpool()
    kept = tracker(kept_store, kept_spool, progress_interval=0)
    none_store, none_spool = MemoryMoves(), MemorySpool()
    none = tracker(none_store, none_spool, progress_interval=0, cached_moves=0)
    for entry in entries(events):
        kept.handle([entry], just_after(events))
        none.handle([entry], just_after(events))
    # then both committed the same move and spooled the same events
    assert none_store.moves == kept_store.moves
    assert [e.id for e in none_spool.events] == [e.id for e in kept_spool.events]
    assert none.cached == 0


def test_a_reader_replaced_after_an_unreadable_chunk_resumes_where_nothing_is_missed() -> None:
    moment = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)
    # after a commit: from the offset after the checkpoint, whatever the start was
    assert resume_point("next", 41, moment) == 42
    assert resume_point(7, 41, 30) == 42
    # with nothing committed: where the stream reader says it gave out nothing yet, not
    # "next" again (which would skip what was written since the first reader opened)
    assert resume_point("next", None, moment) == moment
    assert resume_point("next", None, 70) == 70
    # and with nothing said (another reader's end), from the start again
    assert resume_point("first", None, None) == "first"
