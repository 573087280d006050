"""Retrying a pull (issue 18, item 3): the node's C-MOVE as Move SCU, re-issued for its failures.

The final C-MOVE-RSP names the failed instances; the retrier decides about
them from it, the node asks the archive again at IMAGE level for exactly
those, and the tracker folds that attempt's final response into each
instance's outcome. Pure: no sockets.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from uuid import UUID

import pytest
from pydantic import ValidationError

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.examples import sequential_ids
from dimsebus.services.node import moves
from dimsebus.services.node.capture import Stamp
from dimsebus.services.retrier.decisions import decision_event, record
from dimsebus.services.retrier.policy import (
    GiveUp,
    Retry,
    RetryPolicy,
    decide,
    decision_id,
    failure_of,
)
from dimsebus.services.tracker import progress

STUDY = "1.2.826.0.1.3680043.8.498.1"
UIDS = [f"{STUDY}.1.{n}" for n in (1, 2, 3, 4)]
START = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
NODE = "dimsebus://node/n1"
STALL = dt.timedelta(minutes=5)
POLICY = RetryPolicy(max_attempts=3, initial_delay=2, multiplier=1, jitter=0)
ARCHIVE = ev.RemoteAE(ae_title="QRSCP", host="127.0.0.1", port=104)
TO_ARCHIVE = ev.AssociationRef(
    id=UUID(int=7),
    role="requestor",
    local_ae_title="DIMSEBUS",
    peer_ae_title="QRSCP",
    peer_host="127.0.0.1",
    peer_port=104,
)


class Clock:
    """Stamps one second apart, with sequential ids."""

    def __init__(self) -> None:
        self.n = 100

    def stamp(self, source: str = NODE) -> Stamp:
        self.n += 1
        return Stamp(UUID(int=self.n), START + dt.timedelta(seconds=self.n), source)


def command(
    destination: str = "STORESCP", instances: Sequence[str] | None = None, attempt: int = 1
) -> ev.MoveCommandData:
    return ev.MoveCommandData(
        operation=ev.Operation(kind="move", id=UUID(int=1)),
        node_id="n1",
        source=ARCHIVE,
        destination_ae_title=destination,
        query_level="IMAGE" if instances else "STUDY",
        study_instance_uid=STUDY,
        sop_instance_uids=tuple(instances) if instances else None,
        attempt=attempt,
    )


def final(
    clock: Clock,
    status: int,
    done: int,
    failed: Sequence[str] = (),
    *,
    data: ev.MoveCommandData | None = None,
    counted_failed: int | None = None,
) -> ev.MoveResponseReceived:
    count = len(failed) if counted_failed is None else counted_failed
    values = moves.MoveResponse(status, None, done, count, 0, failed_uids=tuple(failed))
    return moves.response_event(data or command(), TO_ARCHIVE, 5, values, clock.stamp())


def decided(
    event: ev.Event, clock: Clock, policy: RetryPolicy = POLICY
) -> tuple[ev.RetryScheduled | ev.RetryExhausted, ev.ResendSubOperations]:
    """The retrier's event and command for a failure event, as its shell makes them."""
    failure = failure_of(event, policy)
    assert failure is not None
    stamp = clock.stamp("dimsebus://retrier/r1")
    decision = decide(failure, failure.attempt, policy, stamp.time)
    item = record(failure, decision, decision_id(failure), stamp.source, stamp.time)
    return decision_event(item, stamp.source), item.command


def fold(events: Sequence[CloudEvent], retries_on: bool = True) -> progress.MoveState:
    state = None
    for event in events:
        state = progress.apply(state, event)
    assert state is not None
    return state.model_copy(update={"retries_on": retries_on})


def outcome(move: progress.MoveState) -> ev.MoveOutcome:
    return progress.outcome(move, START, STALL)


# -- what a final response says of each instance it was asked for ---------------------


def test_a_final_response_accounts_for_each_instance_it_was_asked_for() -> None:
    # given a re-issued C-MOVE of 4 instances: 1 completed, 1 warning, 1 listed failed
    data = command(instances=UIDS, attempt=2)
    values = moves.MoveResponse(0xB000, None, 1, 2, 1, failed_uids=(UIDS[3],))
    response = moves.response_event(data, TO_ARCHIVE, 5, values, Clock().stamp()).data
    # then the listed one failed, the others are counted completed, warning, and the
    # one left over (counted failed, not listed) failed
    assert response.sop_instance_uids == tuple(UIDS)
    assert response.instance_outcomes() == {
        UIDS[0]: "success",
        UIDS[1]: "warning",
        UIDS[2]: "failure",
        UIDS[3]: "failure",
    }


def test_a_response_that_named_no_instances_accounts_for_none() -> None:
    clock = Clock()
    assert final(clock, 0xB000, 2, (UIDS[1],)).data.instance_outcomes() == {}
    pending = moves.MoveResponse(0xFF00, 2, 1, 0, 0)
    event = moves.response_event(command(instances=UIDS[:3]), TO_ARCHIVE, 5, pending, clock.stamp())
    assert event.data.instance_outcomes() == {}


# -- the retrier's decision ----------------------------------------------------------------


@pytest.mark.parametrize("status", [0xB000, 0xA702, 0xA700])
def test_the_listed_failures_of_a_pull_are_retried_from_the_archive(status: int) -> None:
    # given the final response of a study moved to STORESCP, listing two failed instances
    clock = Clock()
    event = final(clock, status, 2 if status == 0xB000 else 0, (UIDS[2], UIDS[1]))
    # when the retrier decides about it
    failure = failure_of(event, POLICY)
    assert failure is not None
    decision = decide(failure, failure.attempt, POLICY, START)
    item = record(failure, decision, decision_id(failure), "dimsebus://retrier/r1", START)
    # then it retries exactly those, attempt 2, as a C-MOVE from the same archive
    assert failure.transient
    assert isinstance(decision, Retry)
    resend = item.command.data
    assert resend.sop_instance_uids == (UIDS[1], UIDS[2])
    assert (resend.attempt, resend.destination_ae_title) == (2, "STORESCP")
    assert (resend.source, resend.study_instance_uid) == (ARCHIVE, STUDY)
    assert resend.move_originator is None
    # and the node makes of it an IMAGE-level C-MOVE of those instances, same operation
    reissued = moves.reissued(item.command)
    assert reissued.query_level == "IMAGE"
    assert reissued.sop_instance_uids == (UIDS[1], UIDS[2])
    assert (reissued.operation, reissued.attempt) == (event.data.operation, 2)
    assert reissued.series_instance_uids is None  # the node asks the archive (C-FIND)


@pytest.mark.parametrize("status", [0xA801, 0xA900, 0xC001])
def test_a_pull_refused_as_a_whole_is_given_up(status: int) -> None:
    # given an archive that refused the move (destination unknown, bad identifier,
    # unable to process) and still listed the instances failed
    event = final(Clock(), status, 0, (UIDS[0],))
    failure = failure_of(event, POLICY)
    assert failure is not None
    # then nothing is retried
    assert isinstance(decide(failure, 1, POLICY, START), GiveUp)


def test_instances_the_archive_did_not_match_are_given_up() -> None:
    # given a re-issued C-MOVE of 2 instances that matched 1 (completed), failing none
    event = final(Clock(), 0x0000, 1, data=command(instances=UIDS[:2], attempt=2))
    failure = failure_of(event, POLICY)
    # then the one left over is decided about, and given up: no retry can find it
    assert failure is not None
    assert failure.sop_instance_uids == (UIDS[1],)
    assert isinstance(decide(failure, 2, POLICY, START), GiveUp)


def test_a_response_that_names_no_archive_is_given_up() -> None:
    # given a final response of an older node, without source and study
    event = final(Clock(), 0xB000, 2, (UIDS[1],))
    old = event.model_copy(
        update={"data": event.data.model_copy(update={"source": None, "study_instance_uid": None})}
    )
    failure = failure_of(old, POLICY)
    # then the retrier decides (so the tracker is not left waiting) and gives up
    assert failure is not None
    assert isinstance(decide(failure, 1, POLICY, START), GiveUp)


def test_pending_successful_and_cancelled_responses_are_no_failures() -> None:
    clock = Clock()
    pending = moves.response_event(
        command(), TO_ARCHIVE, 5, moves.MoveResponse(0xFF00, 2, 1, 1, 0), clock.stamp()
    )
    assert failure_of(pending, POLICY) is None
    assert failure_of(final(clock, 0x0000, 3), POLICY) is None
    assert failure_of(final(clock, 0xFE00, 1, (UIDS[1],)), POLICY) is None


def test_an_archive_that_cannot_be_asked_again_is_retried_from_it_once_more() -> None:
    # given a re-issued C-MOVE whose archive could not be reached
    data = command(instances=UIDS[1:3], attempt=2)
    unsent = moves.unsent_event(data, "unreachable", "no association", Clock().stamp())
    # when the retrier decides about it
    failure = failure_of(unsent, POLICY)
    assert failure is not None
    decision = decide(failure, 2, POLICY, START)
    item = record(failure, decision, decision_id(failure), "dimsebus://retrier/r1", START)
    # then the next attempt is again a C-MOVE from that archive
    assert failure.transient
    assert (item.command.data.source, item.command.data.study_instance_uid) == (ARCHIVE, STUDY)
    assert item.command.data.attempt == 3


def test_a_resend_from_an_archive_names_its_study() -> None:
    with pytest.raises(ValidationError, match="study_instance_uid"):
        ev.ResendData(
            operation=ev.Operation(kind="move", id=UUID(int=1)),
            node_id="n1",
            sop_instance_uids=(UIDS[0],),
            destination_ae_title="STORESCP",
            move_originator=None,
            attempt=2,
            source=ARCHIVE,
        )


# -- the tracker ------------------------------------------------------------------------


def test_a_listed_failure_keeps_the_pull_retrying_until_the_retrier_decides() -> None:
    # given a final response listing one failed instance, retries on
    clock = Clock()
    first = final(clock, 0xB000, 3, (UIDS[3],), data=command())
    move = fold([first])
    # then the move waits for the retrier's decision
    assert outcome(move) == "retrying"
    # and once it gave up, it is completed with that failure
    given_up, _ = decided(first, clock, POLICY.model_copy(update={"max_attempts": 1}))
    move = fold([first, given_up])
    assert outcome(move) == "completed_with_failures"
    assert [f.sop_instance_uid for f in progress.failed_instances(move)] == [UIDS[3]]


def pull_retried(clock: Clock, retried_status: int = 0x0000) -> list[CloudEvent]:
    """A study of 4 moved to STORESCP with UIDS[1] and UIDS[3] refused, then retried."""
    first = final(clock, 0xB000, 2, (UIDS[1], UIDS[3]))
    scheduled, resend = decided(first, clock)
    asked = moves.reissued(resend)
    failed = (UIDS[3],) if retried_status else ()
    values = moves.MoveResponse(
        retried_status, None, 2 - len(failed), len(failed), 0, failed_uids=failed
    )
    second = moves.response_event(asked, TO_ARCHIVE, 6, values, clock.stamp())
    return [first, scheduled, second]


def test_a_retried_pull_whose_instances_arrive_completes() -> None:
    # given the retry's final response: both instances completed
    clock = Clock()
    events = pull_retried(clock)
    # when the tracker folds the first attempt, the decision and the retry, in any order
    states = {
        progress.counts(move := fold(order)).model_dump_json() + outcome(move)
        for order in itertools.permutations(events)
    }
    # then the move is completed with all four, the same in every order
    move = fold(events)
    assert states == {progress.counts(move).model_dump_json() + "completed"}
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=4)
    assert [o.sop_instance_uid for o in progress.retried_instances(move)] == [UIDS[1], UIDS[3]]
    assert progress.failed_instances(move) == ()


def test_a_retried_pull_that_fails_again_waits_for_the_next_decision() -> None:
    # given a retry in which one instance is refused again (listed, attempt 2)
    clock = Clock()
    events = pull_retried(clock, 0xB000)
    move = fold(events)
    # then that instance failed at attempt 2, and the move waits for the retrier
    assert outcome(move) == "retrying"
    assert [(f.sop_instance_uid, f.attempts) for f in progress.failed_instances(move)] == [
        (UIDS[3], 2)
    ]
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=3, failed=1)
    # and the retrier's next decision is about exactly that instance, attempt 3
    retried = events[-1]
    assert isinstance(retried, ev.MoveResponseReceived)
    scheduled, resend = decided(retried, clock)
    assert resend.data.sop_instance_uids == (UIDS[3],)
    assert resend.data.attempt == 3
    assert outcome(fold([*events, scheduled])) == "retrying"


def test_finished_once_per_final_outcome_of_a_retried_pull() -> None:
    # given the events of a pull retried to completion, folded one by one
    clock = Clock()
    move: progress.MoveState | None = None
    revisions = []
    for event in pull_retried(clock):
        move = progress.apply(move, event)
        assert move is not None
        move = move.model_copy(update={"retries_on": True})
        tally = progress.counts(move)
        move, revision = progress.finish(move, outcome(move), tally)
        revisions += [revision] if revision else []
    # then one finished is published, when the retry completed the move
    assert revisions == [1]
    assert move is not None
    assert move.finished is not None
    assert move.finished.outcome == "completed"


def test_an_event_about_the_instance_outranks_the_final_responses_counts() -> None:
    # given a retry to the node itself: the node refused the instance (0xA700) while the
    # archive's final response counts it completed (an archive's count can be wrong)
    clock = Clock()
    asked = command("DIMSEBUS", instances=[UIDS[0]], attempt=2)
    store = moves.ReceivedStore(
        association=TO_ARCHIVE.model_copy(update={"role": "acceptor"}),
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid=UIDS[0],
        originator_message_id=6,
        requested_at=START,
        status=0xA700,
    )
    answered = moves.answered_event(asked, store, clock.stamp(), "DIMSEBUS")
    counted = moves.response_event(
        asked, TO_ARCHIVE, 6, moves.MoveResponse(0, None, 1, 0, 0), clock.stamp()
    )
    # then the node's own answer is the instance's outcome, in either order
    for order in ([answered, counted], [counted, answered]):
        found = fold(order).instances[UIDS[0]]
        assert (found.category, found.status, found.counted) == ("failure", 0xA700, False)


def test_a_pull_refused_as_a_whole_with_instances_listed_is_failed() -> None:
    # given an archive that does not know the destination and lists what it did not move
    move = fold([final(Clock(), 0xA801, 0, (UIDS[0], UIDS[1]))])
    # then the move failed, with the reason, and waits for no decision
    assert outcome(move) == "failed"
    reason = progress.failure_reason(move, progress.counts(move))
    assert reason is not None
    assert "0xA801" in reason


def test_an_operators_retry_of_a_pull_asks_the_archive_again() -> None:
    # given a pull that completed with a failure the retrier gave up
    clock = Clock()
    first = final(clock, 0xB000, 3, (UIDS[3],))
    given_up, _ = decided(first, clock, POLICY.model_copy(update={"max_attempts": 1}))
    move = fold([first, given_up])
    # when an operator retries it (`moves retry`)
    commands = progress.retry_commands(move, "dimsebus://cli/t", START, iter(sequential_ids()))
    # then the command is a C-MOVE of that instance from the archive, attempt 2
    assert len(commands) == 1
    data = commands[0].data
    assert (data.sop_instance_uids, data.attempt) == ((UIDS[3],), 2)
    assert (data.source, data.study_instance_uid, data.move_originator) == (ARCHIVE, STUDY, None)
