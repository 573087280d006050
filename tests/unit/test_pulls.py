"""The tracker follows the node's own C-MOVEs (Move SCU), to itself or elsewhere, alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from uuid import UUID

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.node import moves
from dimsebus.services.node.capture import Stamp
from dimsebus.services.tracker import progress

STUDY = "1.2.826.0.1.3680043.8.498.1"
UIDS = [f"{STUDY}.1.{n}" for n in (1, 2, 3)]
START = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
SOURCE = "dimsebus://node/n1"
STALL = dt.timedelta(minutes=5)
TO_ARCHIVE = ev.AssociationRef(
    id=UUID(int=7),
    role="requestor",
    local_ae_title="DIMSEBUS",
    peer_ae_title="QRSCP",
    peer_host="127.0.0.1",
    peer_port=104,
)
FROM_ARCHIVE = TO_ARCHIVE.model_copy(update={"id": UUID(int=8), "role": "acceptor"})


def command(destination: str = "DIMSEBUS") -> ev.MoveCommandData:
    return ev.MoveCommandData.model_validate(
        {
            "operation": {"kind": "move", "id": UUID(int=1)},
            "node_id": "n1",
            "source": {"ae_title": "QRSCP", "host": "127.0.0.1", "port": 104},
            "destination_ae_title": destination,
            "query_level": "STUDY",
            "study_instance_uid": STUDY,
        }
    )


class Clock:
    def __init__(self) -> None:
        self.n = 100

    def stamp(self) -> Stamp:
        self.n += 1
        return Stamp(UUID(int=self.n), START + dt.timedelta(seconds=self.n), SOURCE)


def response(
    clock: Clock,
    status: int,
    done: int,
    failed: tuple[str, ...] = (),
    destination: str = "DIMSEBUS",
) -> ev.MoveResponseReceived:
    remaining = None if status not in moves.PENDING else 3 - done - len(failed)
    values = moves.MoveResponse(status, remaining, done, len(failed), 0, failed_uids=failed)
    return moves.response_event(command(destination), TO_ARCHIVE, 5, values, clock.stamp())


def stored(clock: Clock, uid: str, status: int = 0) -> ev.CStoreResponseSent:
    store = moves.ReceivedStore(
        association=FROM_ARCHIVE,
        presentation_context_id=1,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        message_id=UIDS.index(uid) + 1,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        affected_sop_instance_uid=uid,
        originator_message_id=5,
        requested_at=START,
        status=status,
    )
    return moves.answered_event(command(), store, clock.stamp(), "DIMSEBUS")


def fold(events: Sequence[CloudEvent]) -> progress.MoveState | None:
    state = None
    for event in events:
        state = progress.apply(state, event)
    return state


def test_a_move_to_the_node_itself_completes_with_every_instance_named() -> None:
    # given the node's own C-MOVE: pending responses, its answers to 3 C-STOREs, success
    clock = Clock()
    events: list[CloudEvent] = [response(clock, 0xFF00, 0)]
    for done, uid in enumerate(UIDS, 1):
        events += [stored(clock, uid), response(clock, 0xFF00, done)]
    events.append(response(clock, 0x0000, 3))
    # when the tracker folds them
    move = fold(events)
    # then the move is the node's, completed, with 3 completed sub-operations
    assert move is not None
    assert (move.source, move.move_id) == (SOURCE, UUID(int=1))
    assert (move.requestor_ae_title, move.destination_ae_title) == ("DIMSEBUS", "DIMSEBUS")
    assert progress.outcome(move, START, STALL) == "completed"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=3)


def test_a_refused_store_makes_it_complete_with_failures() -> None:
    # given one of the three C-STOREs answered 0xA700 by the node, and the final warning
    clock = Clock()
    events: list[CloudEvent] = [stored(clock, UIDS[0]), stored(clock, UIDS[1], 0xA700)]
    events.append(stored(clock, UIDS[2]))
    events.append(response(clock, 0xB000, 2, (UIDS[1],)))
    # when the tracker folds them
    move = fold(events)
    # then the move has one failure, named, with its status
    assert move is not None
    assert progress.outcome(move, START, STALL) == "completed_with_failures"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=2, failed=1)
    failed = progress.failed_instances(move)
    assert [(f.sop_instance_uid, f.status) for f in failed] == [(UIDS[1], 0xA700)]


def test_the_move_is_in_progress_until_the_final_response() -> None:
    clock = Clock()
    move = fold([response(clock, 0xFF00, 0), stored(clock, UIDS[0])])
    assert move is not None
    assert progress.outcome(move, START, STALL) == "in_progress"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=2, completed=1)


def test_a_redelivered_event_changes_nothing() -> None:
    clock = Clock()
    first = stored(clock, UIDS[0])
    once = fold([response(clock, 0xFF00, 0), first])
    assert progress.apply(once, first) == once


def test_a_move_to_another_destination_completes_by_the_final_counts() -> None:
    # given the node's C-MOVE to STORESCP: pending responses, then success counting 3
    clock = Clock()
    events: list[CloudEvent] = [response(clock, 0xFF00, n, destination="STORESCP") for n in (0, 1)]
    events.append(response(clock, 0x0000, 3, destination="STORESCP"))
    # when the tracker folds them
    move = fold(events)
    # then the move completed with the 3 sub-operations the final response counts
    assert move is not None
    assert move.destination_ae_title == "STORESCP"
    assert progress.outcome(move, START, STALL) == "completed"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=3)


def test_another_destination_that_refuses_some_completes_with_them_listed() -> None:
    # given a final warning counting 2 completed and listing 1 failed, retries off
    clock = Clock()
    move = fold([response(clock, 0xB000, 2, (UIDS[1],), destination="STORESCP")])
    assert move is not None
    # then the move ends completed_with_failures, the listed instance failed
    assert progress.outcome(move, START, STALL) == "completed_with_failures"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=2, failed=1)
    assert [f.sop_instance_uid for f in progress.failed_instances(move)] == [UIDS[1]]


def test_another_destination_failing_unlisted_instances_counts_them_failed() -> None:
    # given a final failure counting 2 failed but listing only one of them
    clock = Clock()
    values = moves.MoveResponse(0xA702, None, 1, 2, 0, failed_uids=(UIDS[2],))
    final = moves.response_event(command("STORESCP"), TO_ARCHIVE, 5, values, clock.stamp())
    move = fold([response(clock, 0xFF00, 0, destination="STORESCP"), final])
    assert move is not None
    assert progress.outcome(move, START, STALL) == "completed_with_failures"
    assert progress.counts(move) == ev.SubOperationCounts(remaining=0, completed=1, failed=2)


def test_another_destination_refused_as_a_whole_is_failed() -> None:
    # given an archive that answers 0xA801 (move destination unknown), nothing counted
    clock = Clock()
    move = fold([response(clock, 0xA801, 0, destination="NOWHERE")])
    assert move is not None
    assert progress.outcome(move, START, STALL) == "failed"
    assert progress.failure_reason(move, progress.counts(move)) is not None


def test_another_destination_folds_the_same_in_any_order() -> None:
    clock = Clock()
    events: list[CloudEvent] = [response(clock, 0xFF00, n, destination="STORESCP") for n in (0, 1)]
    events.append(response(clock, 0xB000, 2, (UIDS[1],), destination="STORESCP"))
    forward, backward = fold(events), fold([*reversed(events), events[0]])
    assert forward is not None
    assert backward is not None
    assert progress.counts(forward) == progress.counts(backward)
    assert forward.model_copy(update={"seen": frozenset()}) == backward.model_copy(
        update={"seen": frozenset()}
    )
