"""One contract, every store: SQLite and PostgreSQL keep moves and checkpoint together."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.sql import PostgresDatabase, open_database
from dimsebus.services.tracker.progress import MoveState, apply, apply_all, move_key
from dimsebus.services.tracker.store import SCHEMA, SqlStore, TrackerStore, _listing, open_store

STORY = move_story(
    node_id="n1", start=dt.datetime(2026, 11, 26, tzinfo=dt.UTC), ids=sequential_ids()
)


def folded() -> MoveState:
    state: MoveState | None = None
    for event in STORY:
        state = apply(state, event)
    assert state is not None
    return state


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrackerStore]:
    if request.param == "sqlite":
        found = open_store(str(tmp_path / "tracker.sqlite"))
    else:
        found = open_store(request.getfixturevalue("postgres_url"))
        assert isinstance(found, SqlStore)
        assert isinstance(found.db, PostgresDatabase)
    yield found
    found.close()


class TestTrackerStore:
    """Given any store."""

    def test_starts_without_a_checkpoint(self, store: TrackerStore) -> None:
        assert store.checkpoint() is None
        assert store.all_moves() == []

    def test_saves_moves_and_checkpoint_together(self, store: TrackerStore) -> None:
        move = folded()
        store.save([move], offset=41)
        assert store.checkpoint() == 41
        assert store.load((move.source, move.move_id)) == move
        assert store.all_moves() == [move]

    def test_a_second_save_replaces_the_move_and_moves_the_checkpoint(
        self, store: TrackerStore
    ) -> None:
        first = apply(None, next(e for e in STORY if move_key(e)))
        assert first is not None
        store.save([first], offset=1)
        store.save([folded()], offset=99)
        assert store.all_moves() == [folded()]
        assert store.checkpoint() == 99

    def test_find_by_prefix(self, store: TrackerStore) -> None:
        move = folded()
        store.save([move], offset=1)
        assert store.find(str(move.move_id)[:20]) == move
        assert store.find("ffffffff") is None

    def test_moves_starting_with_reads_only_the_matching_ones(self, store: TrackerStore) -> None:
        # given a move whose id has a LIKE wildcard's look-alike nowhere in it
        move = folded()
        store.save([move], offset=1)
        move_id = str(move.move_id)
        # then a prefix, in any case, finds it; another prefix or a wildcard does not
        assert store.moves_starting_with(move_id[:9].upper()) == [move]
        assert store.moves_starting_with(move_id) == [move]
        assert store.moves_starting_with("ffffffff") == []
        assert store.moves_starting_with("%") == []
        assert store.moves_starting_with("_") == []

    def test_a_save_after_another_writes_what_changed_and_loads_the_whole_move(
        self, store: TrackerStore
    ) -> None:
        # given the move saved half-way through its events
        events = [e for e in STORY if move_key(e)]
        half: MoveState | None = None
        for event in events[: len(events) // 2]:
            half = apply(half, event)
        assert half is not None
        store.save([half], offset=1)
        # when the whole move is saved with the half as what the store had
        whole = folded()
        store.save([whole], offset=2, before={(whole.source, whole.move_id): half})
        # then the store has the whole move: its instances and the ids of its events
        assert store.load((whole.source, whole.move_id)) == whole
        assert store.all_moves() == [whole]
        assert isinstance(store, SqlStore)
        rows = store.db.execute("SELECT COUNT(*) FROM tracker_instances").fetchone()
        seen = store.db.execute("SELECT COUNT(*) FROM tracker_seen").fetchone()
        assert (rows[0], seen[0]) == (len(whole.instances), len(whole.seen))

    def test_a_save_given_the_events_folded_writes_what_they_changed(
        self, store: TrackerStore
    ) -> None:
        # given the move saved half-way through its events
        events = [e for e in STORY if move_key(e)]
        first, second = events[: len(events) // 2], events[len(events) // 2 :]
        half = apply_all(None, first)
        assert half is not None
        store.save([half], offset=1)
        # when the rest is folded and saved with the events folded since
        whole = apply_all(half, second)
        assert whole is not None
        key = (whole.source, whole.move_id)
        store.save([whole], offset=2, before={key: half}, folded={key: second})
        # then the store has the whole move, each instance and event id in a row once
        assert store.load(key) == whole
        assert isinstance(store, SqlStore)
        rows = store.db.execute("SELECT COUNT(*) FROM tracker_instances").fetchone()
        seen = store.db.execute("SELECT COUNT(*) FROM tracker_seen").fetchone()
        assert (rows[0], seen[0]) == (len(whole.instances), len(whole.seen))

    def test_the_list_columns_kept_batch_by_batch_are_those_of_the_whole_move(
        self, store: TrackerStore
    ) -> None:
        # given the move's events with retries, folded and saved a few at a time, as the
        # tracker does (each batch with the move before it and the events folded since)
        events = [e for e in STORY if move_key(e)]
        retried = [_retried(e) for e in events if isinstance(e, ev.CStoreResponseReceived)]
        assert isinstance(store, SqlStore)
        move: MoveState | None = None
        for at in range(0, len(events) + len(retried), 3):
            batch = [*events, *retried][at : at + 3]
            after = apply_all(move, batch)
            assert after is not None
            key = (after.source, after.move_id)
            store.save([after], offset=at, before={key: move}, folded={key: batch})
            move = after
            # then the list's row after each batch is the one the whole move gives
            row = store.db.execute(
                "SELECT requestor_ae, source_ae, destination_ae, outcome, stalls, "
                "last_event_at, summary FROM tracker_moves"
            ).fetchone()
            assert tuple(row) == _listing(after)

    def test_a_later_outcome_of_an_instance_replaces_its_row(self, store: TrackerStore) -> None:
        # given a move saved, then an instance's outcome replaced by a later attempt
        move = folded()
        store.save([move], offset=1)
        uid, outcome = next(iter(move.instances.items()))
        later = outcome.model_copy(update={"attempt": outcome.attempt + 1, "category": "success"})
        retried = move.model_copy(update={"instances": {**move.instances, uid: later}})
        # when it is saved with the first as before
        store.save([retried], offset=2, before={(move.source, move.move_id): move})
        # then the instance has its later outcome
        loaded = store.load((move.source, move.move_id))
        assert loaded is not None
        assert loaded.instances[uid] == later
        assert loaded == retried


def _retried(event: ev.CStoreResponseReceived) -> ev.CStoreResponseReceived:
    """A second attempt of the instance ``event`` answered, which a warning answers."""
    data = event.data.model_copy(
        update={"attempt": 2, "status": 0xB000, "status_category": "warning"}
    )
    return event.model_copy(update={"id": uuid.uuid4(), "data": data})


def test_the_sqlite_store_commits_without_waiting_for_the_disk(tmp_path: Path) -> None:
    # the moves are rebuilt from the log, each commit with its checkpoint: NORMAL, not FULL;
    # a database not said to be rebuildable (the retrier's, the audit's) keeps SQLite's FULL
    store = open_store(str(tmp_path / "tracker.sqlite"))
    assert isinstance(store, SqlStore)
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()
    plain = open_database(str(tmp_path / "other.sqlite"), SCHEMA)
    assert plain.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    plain.close()
