"""When a move's outcome is final (issue 18): retrier decisions, refusals, revisions."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import sequential_ids
from dimsebus.services.tracker.progress import (
    MoveState,
    apply,
    counts,
    failure_reason,
    finish,
    outcome,
)

T0 = dt.datetime(2026, 11, 30, 3, tzinfo=dt.UTC)
STALL = dt.timedelta(minutes=5)
NODE = "dimsebus://node/n1"
MOVE = ev.Operation(kind="move", id=uuid.UUID(int=0xABC))
STUDY = "1.2.826.0.1.3680043.8.498.1"
UIDS = [f"{STUDY}.{n}" for n in range(1, 5)]
ASSOCIATION = ev.AssociationRef(
    id=uuid.UUID(int=7),
    role="requestor",
    local_ae_title="NODE",
    peer_ae_title="STORESCP",
    peer_host="127.0.0.1",
    peer_port=11112,
)
ORIGINATOR = ev.MoveOriginator(ae_title="MOVESCU", message_id=1)


class Events:
    """Events of one move, with deterministic ids and times."""

    def __init__(self) -> None:
        self.ids: Iterator[uuid.UUID] = sequential_ids(100)
        self.clock = T0

    def make(self, model: type[CloudEvent], data: Any, source: str = NODE) -> CloudEvent:
        self.clock += dt.timedelta(milliseconds=10)
        return model.model_validate(
            {
                "id": next(self.ids),
                "source": source,
                "time": self.clock,
                "subject": "s",
                "data": data,
            }
        )

    def stored(self, uid: str, status: int, attempt: int = 1) -> CloudEvent:
        category = "success" if status == 0 else "failure"
        return self.make(
            ev.CStoreResponseReceived,
            {
                "association": ASSOCIATION,
                "presentation_context_id": 1,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "message_id": 1,
                "affected_sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "affected_sop_instance_uid": uid,
                "move_originator": ORIGINATOR,
                "operation": MOVE,
                "attempt": attempt,
                "requested_at": self.clock,
                "status": status,
                "status_category": category,
                "responded_at": self.clock,
            },
        )

    def unsent(self, uids: list[str], reason: str, attempt: int = 1) -> CloudEvent:
        return self.make(
            ev.CStoreUnsent,
            {
                "operation": MOVE,
                "destination_ae_title": "STORESCP",
                "sop_instance_uids": tuple(uids),
                "attempt": attempt,
                "move_originator": ORIGINATOR,
                "reason": reason,
                "detail": "as the node found it",
                "at": self.clock,
            },
        )

    def final(
        self, status: int, completed: int, failed: int, listed: tuple[str, ...] = ()
    ) -> CloudEvent:
        category = "success" if status == 0 else "warning" if status == 0xB000 else "failure"
        return self.make(
            ev.MoveCompleted,
            {
                "association": ASSOCIATION.model_copy(update={"role": "acceptor"}),
                "message_id": 1,
                "operation": MOVE,
                "status": status,
                "status_category": category,
                "counts": {"remaining": 0, "completed": completed, "failed": failed, "warning": 0},
                "failed_sop_instance_uids": listed,
                "move_destination": "STORESCP",
                "completed_at": self.clock,
            },
        )

    def decided(self, uids: list[str], attempt: int, gave_up: bool = False) -> CloudEvent:
        data = {
            "operation": MOVE,
            "node_id": "n1",
            "sop_instance_uids": tuple(uids),
            "attempt": attempt,
            "reason": "permanent" if gave_up else "transient",
            "retry_at": None if gave_up else self.clock + dt.timedelta(seconds=1),
        }
        model = ev.RetryExhausted if gave_up else ev.RetryScheduled
        return self.make(model, data, source="dimsebus://retrier/r1")

    def unnamed(self, count: int) -> CloudEvent:
        return self.make(
            ev.MessageInvalid,
            {
                "message": "C-MOVE-RSP",
                "operation": MOVE,
                "error": f"{count} value(s) of FailedSOPInstanceUIDList are not valid UIDs",
                "count": count,
                "at": self.clock,
            },
        )


def fold(events: list[CloudEvent], retries_on: bool = False) -> MoveState:
    state: MoveState | None = MoveState(source=NODE, move_id=MOVE.id, retries_on=retries_on)
    for event in events:
        state = apply(state, event)
    assert state is not None
    return state


def now_of(move: MoveState) -> dt.datetime:
    assert move.last_event_at is not None
    return move.last_event_at + dt.timedelta(seconds=1)


def result(move: MoveState) -> ev.MoveOutcome:
    return outcome(move, now_of(move), STALL)


def full_disk_story(e: Events) -> dict[str, list[CloudEvent]]:
    """Two of four instances refused 0xA700; the retrier retries them; the retry succeeds."""
    return {
        "first": [
            e.stored(UIDS[0], 0),
            e.stored(UIDS[1], 0),
            e.stored(UIDS[2], 0xA700),
            e.stored(UIDS[3], 0xA700),
            e.final(0xB000, 2, 2, (UIDS[2], UIDS[3])),
        ],
        "scheduled": [e.decided(UIDS[2:], attempt=2)],
        "retried": [e.stored(UIDS[2], 0, attempt=2), e.stored(UIDS[3], 0, attempt=2)],
    }


def test_a_failure_the_retrier_has_not_decided_about_keeps_the_move_retrying() -> None:
    # given a move whose final response came, with two failures and retries on
    story = full_disk_story(Events())
    # when the retrier has not decided yet, then it is retrying (not finished)
    assert result(fold(story["first"], retries_on=True)) == "retrying"
    # and once it scheduled the retry, still retrying; once the retries succeed, completed
    assert result(fold([*story["first"], *story["scheduled"]], retries_on=True)) == "retrying"
    every = [*story["first"], *story["scheduled"], *story["retried"]]
    assert result(fold(every, retries_on=True)) == "completed"
    # without a retrier, the failures are final at once
    assert result(fold(story["first"])) == "completed_with_failures"


def test_given_up_failures_finish_the_move_with_failures() -> None:
    e = Events()
    story = full_disk_story(e)
    gave_up = e.decided(UIDS[2:], attempt=1, gave_up=True)
    assert result(fold([*story["first"], gave_up], retries_on=True)) == "completed_with_failures"


def test_a_failed_retry_waits_for_the_next_decision() -> None:
    # given attempt 2 of one instance failed again after its retry was scheduled
    e = Events()
    story = full_disk_story(e)
    again = [e.stored(UIDS[2], 0, attempt=2), e.stored(UIDS[3], 0xA700, attempt=2)]
    move = fold([*story["first"], *story["scheduled"], *again], retries_on=True)
    # then the move waits for the retrier's decision about attempt 2
    assert result(move) == "retrying"
    # and a retrier that never decides shows as stalled, not finished
    assert outcome(move, now_of(move) + STALL * 2, STALL) == "stalled"


def test_unknown_destination_fails_the_move_with_its_reason_without_waiting() -> None:
    # given the node answered 0xA801 and reported every matched instance unsent
    e = Events()
    events = [e.unsent(UIDS, "unknown_destination"), e.final(0xA801, 0, 4, tuple(UIDS))]
    move = fold(events, retries_on=True)
    # then the move failed, and says why, without waiting for the retrier
    assert result(move) == "failed"
    assert counts(move).failed == 4
    reason = failure_reason(move, counts(move))
    assert reason is not None
    assert "0xA801" in reason
    assert "unknown_destination" in reason


def test_a_destination_rejecting_for_good_fails_the_move() -> None:
    e = Events()
    events = [e.unsent(UIDS, "rejected_permanent"), e.final(0xA801, 0, 4)]
    assert result(fold(events)) == "failed"


def test_an_unreachable_destination_is_retried_not_failed() -> None:
    # 0xA801 is also pynetdicom's answer for an unreachable destination: a retry can fix it
    e = Events()
    events = [e.unsent(UIDS, "unreachable"), e.final(0xA801, 0, 4)]
    assert result(fold(events, retries_on=True)) == "retrying"
    assert result(fold(events)) == "completed_with_failures"


def test_unable_to_process_is_failed() -> None:
    e = Events()
    move = fold([e.final(0xC001, 0, 0)])
    assert result(move) == "failed"
    assert "0xC001" in (failure_reason(move, counts(move)) or "")


def test_sub_operations_no_event_can_name_settle_on_the_final_counts() -> None:
    # given a final response counting 4 sub-operations, one of them with an invalid UID that
    # the node dropped from the failed list and named only in dicom.message.invalid
    e = Events()
    named = [e.stored(uid, 0) for uid in UIDS[:3]]
    final = e.final(0xB000, 3, 1)
    # when the response events and the final response are in, but not the invalid-UID report
    assert counts(fold([*named, final])).remaining == 1
    # then with it, the move settles: the unnamed one is failed, not stalled
    move = fold([*named, final, e.unnamed(1)], retries_on=True)
    assert counts(move) == ev.SubOperationCounts(remaining=0, completed=3, failed=1, warning=0)
    assert result(move) == "completed_with_failures"
    assert outcome(move, now_of(move) + STALL * 2, STALL) == "completed_with_failures"


def _finishes(move: MoveState, results: list[ev.MoveOutcome]) -> list[int | None]:
    revisions = []
    for each in results:
        move, revision = finish(move, each, counts(move))
        revisions.append(revision)
    return revisions


def test_a_final_outcome_is_published_once_and_a_change_after_it_is_a_new_revision() -> None:
    move = fold(full_disk_story(Events())["first"])
    # the same final outcome seen again publishes nothing more
    assert _finishes(move, ["completed_with_failures"] * 3) == [1, None, None]
    # retrying again after finishing, then final again: revision 2 (even with the same outcome)
    steps: list[ev.MoveOutcome] = [
        "in_progress",
        "completed_with_failures",
        "retrying",
        "retrying",
        "completed",
        "completed",
    ]
    assert _finishes(move, steps) == [None, 1, None, None, 2, None]


def test_a_finished_move_whose_counts_change_is_a_new_revision() -> None:
    e = Events()
    story = full_disk_story(e)
    first = fold(story["first"])
    first, revision = finish(first, "completed_with_failures", counts(first))
    assert revision == 1
    # a manual retry (no retrier) turns one failure into a success: still with failures
    later = apply(first, e.stored(UIDS[2], 0, attempt=2))
    assert later is not None
    assert result(later) == "completed_with_failures"
    assert finish(later, "completed_with_failures", counts(later))[1] == 2


EVENTS = Events()
STORY = full_disk_story(EVENTS)
EVERY = [*STORY["first"], *STORY["scheduled"], *STORY["retried"], EVENTS.unnamed(1)]


@settings(max_examples=200, deadline=None)
@given(order=st.permutations(EVERY), repeats=st.lists(st.sampled_from(EVERY), max_size=6))
def test_decisions_and_unnamed_sub_operations_fold_in_any_order(
    order: list[CloudEvent], repeats: list[CloudEvent]
) -> None:
    # the retrier's decisions and the node's invalid-UID reports, in any order, with duplicates
    folded = fold([*order, *repeats], retries_on=True)
    expected = fold(EVERY, retries_on=True)
    assert folded == expected
    assert result(folded) == result(expected)


@settings(max_examples=100, deadline=None)
@given(order=st.permutations([*STORY["first"], *STORY["scheduled"]]))
def test_a_move_awaiting_its_retry_is_never_finished_whatever_the_order(
    order: list[CloudEvent],
) -> None:
    # every prefix of any order is unfinished: no final outcome before the retry's results
    move: MoveState | None = MoveState(source=NODE, move_id=MOVE.id, retries_on=True)
    for event in order:
        move = apply(move, event)
        assert move is not None
        assert result(move) in ("in_progress", "retrying")
