"""The retrier's pure core: which failures are retried, when, and what a decision publishes."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.examples import move_story, sequential_ids
from dimsebus.services.node.resend import group_commands
from dimsebus.services.retrier.decisions import decision_event, record, requeued
from dimsebus.services.retrier.policy import (
    Failure,
    GiveUp,
    Retry,
    RetryPolicy,
    decide,
    decision_id,
    delay_step,
    failure_of,
)
from dimsebus.services.tracker.progress import (
    MoveState,
    apply,
    failed_instances,
    outcome,
    retry_commands,
)

T0 = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
STALL = dt.timedelta(minutes=5)
POLICY = RetryPolicy(max_attempts=4, initial_delay=10, multiplier=3, max_delay=60, jitter=0.2)
STORY = move_story(node_id="n1", start=T0, ids=sequential_ids(), instances=8)
SOURCE = "dimsebus://retrier/r1"


def received(status: int, *, attempt: int = 1, kind: str = "move") -> ev.CStoreResponseReceived:
    """A response event of the story with another status, attempt or operation kind."""
    base = next(e for e in STORY if isinstance(e, ev.CStoreResponseReceived))
    data: dict[str, Any] = base.data.model_dump()
    category = {0: "success", 0xB000: "warning"}.get(status, "failure")
    data.update(status=status, status_category=category, attempt=attempt)
    data["operation"]["kind"] = kind
    return ev.CStoreResponseReceived.model_validate({**base.model_dump(), "data": data})


def missing() -> ev.CStoreResponseMissing:
    return next(e for e in STORY if isinstance(e, ev.CStoreResponseMissing))


def unsent(reason: ev.UnsentReason) -> ev.CStoreUnsent:
    return ev.CStoreUnsent.model_validate(
        {
            "id": uuid.UUID(int=99),
            "source": "dimsebus://node/n1",
            "time": T0,
            "subject": "x",
            "data": {
                "operation": {"kind": "move", "id": str(uuid.UUID(int=77))},
                "destination_ae_title": "STORESCP",
                "sop_instance_uids": ["1.2.3", "1.2.4"],
                "reason": reason,
                "detail": "why",
                "at": T0,
            },
        }
    )


def failure(event: ev.Event, policy: RetryPolicy = POLICY) -> Failure:
    found = failure_of(event, policy)
    assert found is not None
    return found


# -- which failures are transient -------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "transient"),
    [
        (received(0xA700), True),  # out of resources
        (received(0xA7FF), True),
        (received(0xA900), False),  # data set does not match the SOP class
        (received(0xC000), False),  # cannot understand
        (received(0x0122), False),  # SOP class not supported
        (received(0x0124), False),  # not authorized
        (missing(), True),  # aborted: a new association can fix it
        (unsent("unreachable"), True),
        (unsent("rejected_transient"), True),
        (unsent("association_lost"), True),
        (unsent("rejected_permanent"), False),
        (unsent("unknown_destination"), False),
        (unsent("not_found"), False),
    ],
)
def test_transient_and_permanent_failures(event: ev.Event, transient: bool) -> None:
    assert failure(event).transient is transient


def test_successes_and_warnings_are_not_failures_unless_asked() -> None:
    assert failure_of(received(0x0000), POLICY) is None
    assert failure_of(received(0xB000), POLICY) is None
    retry_warnings = POLICY.model_copy(update={"retry_on_warning": True})
    assert failure(received(0xB000), retry_warnings).transient


def test_other_events_are_not_failures() -> None:
    completed = next(e for e in STORY if isinstance(e, ev.MoveCompleted))
    assert failure_of(completed, POLICY) is None


# -- when ----------------------------------------------------------------------------


def test_delays_grow_by_the_multiplier_up_to_the_maximum() -> None:
    assert [delay_step(n, POLICY) for n in (1, 2, 3, 4)] == [10, 30, 60, 60]


@given(attempt=st.integers(1, 3), draw=st.floats(0, 1, exclude_max=True))
def test_a_transient_failure_is_retried_within_the_jitter(attempt: int, draw: float) -> None:
    decision = decide(failure(received(0xA700)), attempt, POLICY, T0, draw)
    assert isinstance(decision, Retry)
    assert decision.attempt == attempt + 1
    step = delay_step(attempt, POLICY)
    delay = (decision.at - T0).total_seconds()
    assert step * 0.8 - 1e-6 <= delay <= step * 1.2 + 1e-6


def test_no_jitter_at_the_middle_draw() -> None:
    decision = decide(failure(received(0xA700)), 1, POLICY, T0, 0.5)
    assert decision == Retry(2, T0 + dt.timedelta(seconds=10), 10.0)


def test_give_up_after_max_attempts() -> None:
    decision = decide(failure(received(0xA700)), 4, POLICY, T0)
    assert isinstance(decision, GiveUp)
    assert decision.reason.startswith("4 of 4 attempts failed; last: 0xA700")


def test_a_permanent_failure_is_given_up_at_once() -> None:
    decision = decide(failure(received(0xA900)), 1, POLICY, T0)
    assert isinstance(decision, GiveUp)
    assert decision.reason.startswith("permanent failure, not retried: 0xA900")


def test_c_get_sub_operations_are_not_retried_by_the_node() -> None:
    decision = decide(failure(received(0xA700, kind="get")), 1, POLICY, T0)
    assert isinstance(decision, GiveUp)
    assert "C-GET" in decision.reason


def test_policy_errors_name_the_setting() -> None:
    with pytest.raises(ValidationError, match="max_delay"):
        RetryPolicy(initial_delay=60, max_delay=10)
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# -- what a decision publishes ------------------------------------------------------------


def test_one_failure_one_decision_id() -> None:
    event = received(0xA700)
    again = event.model_copy(update={"id": uuid.UUID(int=12345)})  # the same failure, redelivered
    assert decision_id(failure(event)) == decision_id(failure(again))
    assert decision_id(failure(event)) != decision_id(failure(received(0xA700, attempt=2)))


def test_a_retry_becomes_a_scheduled_event_and_a_resend_command() -> None:
    found = failure(received(0xA700))
    item = record(found, decide(found, 1, POLICY, T0), decision_id(found), SOURCE, T0)
    event = decision_event(item, SOURCE)
    assert item.state == "scheduled"
    assert item.command.id == item.id
    assert item.command.routing_key == "dimsebus.command.resend.n1"
    assert item.data.attempt == 2
    assert item.data.move_originator == found.move_originator
    assert isinstance(event, ev.RetryScheduled)
    assert (event.data.attempt, event.data.retry_at) == (2, item.retry_at)
    assert decision_event(item, SOURCE).id == event.id  # published twice, one id


def test_giving_up_becomes_an_exhausted_event_and_a_parked_item() -> None:
    found = failure(received(0xA900))
    item = record(found, decide(found, 1, POLICY, T0), decision_id(found), SOURCE, T0)
    event = decision_event(item, SOURCE)
    assert item.state == "parked"
    assert isinstance(event, ev.RetryExhausted)
    assert event.data.status == 0xA900
    again = requeued(item, SOURCE, T0)
    assert again.id != item.command.id
    assert again.data == item.data


# -- the node coalesces commands ------------------------------------------------------------


def test_commands_are_grouped_by_operation_and_destination() -> None:
    found = [failure(received(0xA700)), failure(missing()), failure(unsent("unreachable"))]
    commands = [
        record(f, decide(f, 1, POLICY, T0), decision_id(f), SOURCE, T0).command for f in found
    ]
    groups = group_commands([*commands, commands[0]])
    by_operation = {g.operation.id: g for g in groups}
    assert len(groups) == 2  # the story's move, and the unsent event's operation
    story_move = by_operation[found[0].operation.id]
    assert set(story_move.attempts) == {*found[0].sop_instance_uids, *found[1].sop_instance_uids}
    assert set(story_move.attempts.values()) == {2}


# -- the tracker shows what the retrier does -------------------------------------------------


def fold(events: list[Any]) -> MoveState:
    state: MoveState | None = None
    for event in events:
        state = apply(state, event)
    assert state is not None
    return state


def move_events() -> list[Any]:
    return [
        e
        for e in STORY
        if e.type.startswith(("dicom.move", "dicom.cstore"))
        and getattr(e.data, "operation", None) == ev.Operation(kind="move", id=uuid.UUID(int=1))
    ]


def retry_event(found: Failure, decision: Retry | GiveUp) -> ev.RetryScheduled | ev.RetryExhausted:
    return decision_event(record(found, decision, decision_id(found), SOURCE, T0), SOURCE)


def test_a_scheduled_retry_makes_the_move_retrying_until_it_reports() -> None:
    failures = [failure(e) for e in move_events() if failure_of(e, POLICY)]
    scheduled = [retry_event(f, decide(f, 1, POLICY, T0)) for f in failures]
    move = fold([*move_events(), *scheduled])
    assert outcome(move, T0, STALL) == "retrying"
    assert all(f.next_attempt_at is not None for f in failed_instances(move))
    given_up = [retry_event(f, GiveUp("operator says no")) for f in failures]
    move = fold([*move_events(), *given_up])
    assert outcome(move, T0, STALL) == "completed_with_failures"
    assert {f.gave_up for f in failed_instances(move)} == {"operator says no"}


def test_manual_retry_resends_every_failed_instance_with_one_more_attempt() -> None:
    move = fold(move_events())
    commands = retry_commands(move, "dimsebus://cli/t", T0, iter(sequential_ids(500)))
    assert [c.data.attempt for c in commands] == [2]
    assert set(commands[0].data.sop_instance_uids) == {
        f.sop_instance_uid for f in failed_instances(move)
    }
    assert commands[0].data.move_originator == ev.MoveOriginator(ae_title="MOVESCU", message_id=1)
