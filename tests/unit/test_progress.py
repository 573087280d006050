"""The tracker's fold: any order, any duplicates, the same move; outcomes as operators read them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import every_event, move_story, sequential_ids
from dimsebus.services.tracker.progress import (
    MoveState,
    apply,
    apply_all,
    counts,
    failed_instances,
    may_be_final,
    move_key,
    named_instances,
    outcome,
)
from tests.unit.test_progress_final import UIDS, Events

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
LATER = T0 + dt.timedelta(minutes=1)
STALL = dt.timedelta(minutes=5)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=8)
MOVE_EVENTS = [e for e in STORY if move_key(e) is not None]


def fold(events: list[CloudEvent]) -> MoveState | None:
    state: MoveState | None = None
    for event in events:
        state = apply(state, event)
    return state


def test_the_story_folds_to_its_counts() -> None:
    # given the example move: 8 instances, one 0xA700, one missing response
    move = fold(MOVE_EVENTS)
    assert move is not None
    # then the tracker reports what the final C-MOVE-RSP reported
    assert (move.requestor_ae_title, move.destination_ae_title) == ("MOVESCU", "STORESCP")
    assert counts(move) == ev.SubOperationCounts(remaining=0, completed=6, warning=0, failed=2)
    assert outcome(move, LATER, STALL) == "completed_with_failures"
    reasons = {f.sop_instance_uid[-3:]: f.reason for f in failed_instances(move)}
    assert any("0xA700" in reason for reason in reasons.values())
    assert any("no response: aborted" in reason for reason in reasons.values())


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(MOVE_EVENTS), repeats=st.lists(st.sampled_from(MOVE_EVENTS), max_size=10)
)
def test_any_order_with_duplicates_folds_to_the_same_state(
    order: list[CloudEvent], repeats: list[CloudEvent]
) -> None:
    assert fold([*order, *repeats]) == fold(MOVE_EVENTS)


def _retry(event: CloudEvent, attempt: int, status: int, ids: Iterator[uuid.UUID]) -> CloudEvent:
    data: dict[str, Any] = event.data.model_dump()
    data.update(
        attempt=attempt, status=status, status_category="success" if status == 0 else "failure"
    )
    for key in ("reason", "detail", "detected_at"):
        data.pop(key, None)
    data.setdefault("responded_at", LATER)
    return ev.CStoreResponseReceived.model_validate(
        {
            "id": next(ids),
            "source": event.source,
            "time": LATER,
            "subject": event.subject,
            "data": data,
        }
    )


def test_successful_retries_complete_the_move() -> None:
    # given the story, then a second attempt that succeeds for each failed instance
    failures = [
        e
        for e in MOVE_EVENTS
        if isinstance(e, ev.CStoreResponseMissing)
        or (isinstance(e, ev.CStoreResponseReceived) and e.data.status != 0)
    ]
    ids = sequential_ids(1000)
    retries = [_retry(e, 2, 0, ids) for e in failures]
    move = fold([*MOVE_EVENTS, *retries])
    assert move is not None
    # then every instance succeeded and the attempts show
    assert outcome(move, LATER, STALL) == "completed"
    assert counts(move).failed == 0
    uids = {e.data.affected_sop_instance_uid for e in failures}
    assert {move.instances[uid].attempt for uid in uids} == {2}


@given(order=st.permutations(list(range(4))))
def test_attempts_decide_regardless_of_arrival(order: list[int]) -> None:
    # attempt 2 fails, attempt 3 succeeds: whatever order they arrive in, 3 wins
    failure = next(
        e for e in MOVE_EVENTS if isinstance(e, ev.CStoreResponseReceived) and e.data.status
    )
    ids = sequential_ids(2000)
    tries = [
        failure,
        _retry(failure, 2, 0xA700, ids),
        _retry(failure, 3, 0, ids),
        _retry(failure, 2, 0xA700, ids),
    ]
    move = fold([tries[i] for i in order])
    assert move is not None
    uid = failure.data.affected_sop_instance_uid
    assert (move.instances[uid].attempt, move.instances[uid].category) == (3, "success")


def test_in_progress_then_stalled() -> None:
    partial = fold([e for e in MOVE_EVENTS if not isinstance(e, ev.MoveCompleted)])
    assert partial is not None
    assert partial.last_event_at is not None
    assert outcome(partial, partial.last_event_at, STALL) == "in_progress"
    assert outcome(partial, partial.last_event_at + STALL * 2, STALL) == "stalled"


def test_final_response_before_the_last_responses_is_not_finished_yet() -> None:
    last = next(e for e in reversed(MOVE_EVENTS) if isinstance(e, ev.CStoreResponseReceived))
    early = fold([e for e in MOVE_EVENTS if e is not last])
    assert early is not None
    assert counts(early).remaining == 1
    assert outcome(early, LATER, STALL) == "in_progress"


def _completed(status: int, category: str, completed: int, failed: int) -> CloudEvent:
    requested = next(e for e in MOVE_EVENTS if isinstance(e, ev.MoveRequested))
    final = next(e for e in MOVE_EVENTS if isinstance(e, ev.MoveCompleted))
    data = final.data.model_dump()
    data.update(
        status=status,
        status_category=category,
        failed_sop_instance_uids=(),
        counts={"remaining": 0, "completed": completed, "failed": failed, "warning": 0},
    )
    return ev.MoveCompleted.model_validate(
        {
            "id": uuid.uuid4(),
            "source": requested.source,
            "time": LATER,
            "subject": "x",
            "data": data,
        }
    )


def test_unknown_destination_is_failed_and_cancel_is_cancelled() -> None:
    requested = next(e for e in MOVE_EVENTS if isinstance(e, ev.MoveRequested))
    unknown = fold([requested, _completed(0xA801, "failure", 0, 0)])
    cancelled = fold([requested, _completed(0xFE00, "cancel", 0, 0)])
    assert unknown is not None
    assert cancelled is not None
    assert outcome(unknown, LATER, STALL) == "failed"
    assert outcome(cancelled, LATER, STALL) == "cancelled"


def test_events_of_other_operations_are_ignored() -> None:
    others = [e for e in STORY if move_key(e) is None]
    assert others
    assert all(apply(None, e) is None for e in others)


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(MOVE_EVENTS),
    repeats=st.lists(st.sampled_from(MOVE_EVENTS), max_size=10),
    later=st.sampled_from([LATER, LATER + STALL * 2]),
)
def test_no_prefix_that_may_not_be_final_has_a_final_outcome(
    order: list[CloudEvent], repeats: list[CloudEvent], later: dt.datetime
) -> None:
    # the tracker derives nothing from a state that may not be final (may_be_final):
    # whatever the order and the duplicates, no such state has an outcome to publish
    state: MoveState | None = None
    for event in [*order, *repeats]:
        state = apply(state, event)
        assert state is not None
        if not may_be_final(state):
            assert outcome(state, later, STALL) in ("in_progress", "stalled")


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(MOVE_EVENTS), repeats=st.lists(st.sampled_from(MOVE_EVENTS)))
def test_folding_never_changes_the_state_it_was_given(
    order: list[CloudEvent], repeats: list[CloudEvent]
) -> None:
    # apply is pure: the state before an event is the same after, whatever came after it
    states: list[tuple[MoveState, str]] = []
    state: MoveState | None = None
    for event in [*order, *repeats]:
        state = apply(state, event)
        assert state is not None
        states.append((state, state.model_dump_json()))
    assert all(kept.model_dump_json() == dumped for kept, dumped in states)


def _with_retries(events: list[CloudEvent]) -> list[CloudEvent]:
    """The story's events and a second attempt, failed or not, of each failure."""
    ids = sequential_ids(3000)
    failures = [e for e in events if isinstance(e, ev.CStoreResponseReceived) and e.data.status]
    return [*events, *(_retry(e, 2, 0xA700 * (n % 2), ids) for n, e in enumerate(failures))]


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(_with_retries(MOVE_EVENTS)),
    repeats=st.lists(st.sampled_from(MOVE_EVENTS), max_size=10),
    cut=st.integers(min_value=0, max_value=40),
)
def test_folding_a_batch_at_once_is_folding_one_by_one(
    order: list[CloudEvent], repeats: list[CloudEvent], cut: int
) -> None:
    # given the move's events in any order, with duplicates, in two batches
    events = [*order, *repeats]
    first, second = events[:cut], events[cut:]
    # when each batch is folded at once (runs of responses on one working copy)
    at_once = apply_all(apply_all(None, first), second)
    # then the state is the one of folding the events one by one
    assert at_once == fold(events)


def test_a_batch_of_repeats_changes_nothing() -> None:
    move = fold(MOVE_EVENTS)
    assert apply_all(move, MOVE_EVENTS) is move


def _stories() -> list[CloudEvent]:
    """The story with retries, every kind of event a move folds (pulls too), and unsent."""
    every = every_event("n1", T0, sequential_ids(5000))
    e = Events()
    unsent = [
        e.stored(UIDS[0], 0),
        e.unsent(UIDS[1:3], "unreachable"),
        e.unsent(UIDS[2:], "not_found", 2),
    ]
    return [*_with_retries(MOVE_EVENTS), *(x for x in every if move_key(x)), *unsent]


STORIES = _stories()


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(STORIES),
    repeats=st.lists(st.sampled_from(STORIES), max_size=10),
    cut=st.integers(min_value=0, max_value=60),
)
def test_a_batch_changes_only_the_instances_its_events_name_and_adds_only_their_ids(
    order: list[CloudEvent], repeats: list[CloudEvent], cut: int
) -> None:
    # given each move's events in any order, with duplicates, folded in two batches
    events = [*order, *repeats]
    for key in {move_key(event) for event in events}:
        mine = [event for event in events if move_key(event) == key]
        first, second = mine[:cut], mine[cut:]
        before = apply_all(None, first)
        # when the second batch is folded, one by one and at once
        for after in (fold_from(before, second), apply_all(before, second)):
            assert after is not None
            # then only instances the batch names have another outcome (the store writes
            # only those), and only the batch's event ids were added
            known = before.instances if before is not None else {}
            changed = {uid for uid, o in after.instances.items() if o is not known.get(uid)}
            assert changed <= {uid for event in second for uid in named_instances(event)}
            added = after.seen - (before.seen if before is not None else frozenset())
            assert added <= {event.id for event in second}


def fold_from(state: MoveState | None, events: list[CloudEvent]) -> MoveState | None:
    for event in events:
        state = apply(state, event)
    return state
