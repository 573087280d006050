"""The pure fold of a C-MOVE's events into its progress and outcome.

A move is keyed by the node that served it (``source``) and the operation id
that node stamped on the C-MOVE-RQ and on every sub-operation: one id per
(node, C-MOVE association, C-MOVE Message ID), so the key survives Message ID
wrap-around. ``apply`` is order-insensitive: any permutation of a move's
events, with duplicates, folds to the same state (a property test checks).
Time comes in as arguments; nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal
from uuid import UUID

from pydantic import Field

from schemas import events as ev
from schemas.envelope import CloudEvent, Model
from schemas.status import Service, describe_status

Category = Literal["success", "warning", "failure", "cancel", "missing"]
MoveKey = tuple[str, UUID]
FAILED: frozenset[str] = frozenset({"failure", "cancel", "missing"})


class InstanceOutcome(Model):
    """The latest known result of one SOP instance's sub-operation."""

    sop_instance_uid: str
    category: Category
    status: int | None
    reason: str
    attempt: int
    at: dt.datetime
    event_id: UUID

    @property
    def rank(self) -> tuple[int, dt.datetime, str]:
        """Later attempts win; within one, the later response (event id breaks ties)."""
        return (self.attempt, self.at, str(self.event_id))


class TimelineEntry(Model):
    """One thing that happened to a move, for `dimsebus moves show`."""

    at: dt.datetime
    event_id: UUID
    what: str


class MoveState(Model):
    """Everything the log says about one C-MOVE."""

    source: str
    move_id: UUID
    requestor_ae_title: str | None = None
    destination_ae_title: str | None = None
    association_id: UUID | None = None
    message_id: int | None = None
    query_level: str | None = None
    keys: dict[str, str] = Field(default_factory=dict)
    expected: int | None = None
    final_status: int | None = None
    final_category: str | None = None
    reported_failed: tuple[str, ...] = ()
    instances: dict[str, InstanceOutcome] = Field(default_factory=dict)
    seen: frozenset[UUID] = frozenset()
    started_at: dt.datetime | None = None
    last_event_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    timeline: tuple[TimelineEntry, ...] = ()

    @property
    def node_id(self) -> str:
        """The node's id, from its source URI."""
        return self.source.rsplit("/", 1)[-1]


# What the node reports about a move; the tracker's own derived events are not folded back.
TRACKED = (ev.MoveRequested, ev.MoveCompleted, ev.CStoreResponseReceived, ev.CStoreResponseMissing)


def move_key(event: CloudEvent) -> MoveKey | None:
    """The move an event belongs to, or None for events that are not about a C-MOVE."""
    if not isinstance(event, TRACKED):
        return None
    operation = event.data.operation
    return (event.source, operation.id) if operation.kind == "move" else None


def apply(state: MoveState | None, event: CloudEvent) -> MoveState | None:
    """Fold one event into its move's state; a repeated event id changes nothing."""
    key = move_key(event)
    if key is None:
        return state
    move = state or MoveState(source=key[0], move_id=key[1])
    if event.id in move.seen:
        return move
    move = _touch(move, event)
    match event:
        case ev.MoveRequested():
            return _requested(move, event)
        case ev.MoveCompleted():
            return _completed(move, event)
        case ev.CStoreResponseReceived() | ev.CStoreResponseMissing():
            return _response(move, event)
    return move


def _touch(move: MoveState, event: CloudEvent) -> MoveState:
    return move.model_copy(
        update={
            "seen": move.seen | {event.id},
            "started_at": min(filter(None, (move.started_at, event.time))),
            "last_event_at": max(filter(None, (move.last_event_at, event.time))),
        }
    )


def _with_entry(move: MoveState, event: CloudEvent, what: str) -> tuple[TimelineEntry, ...]:
    entry = TimelineEntry(at=event.time, event_id=event.id, what=what)
    return tuple(sorted((*move.timeline, entry), key=lambda e: (e.at, str(e.event_id))))


def _requested(move: MoveState, event: ev.MoveRequested) -> MoveState:
    data = event.data
    return move.model_copy(
        update={
            "requestor_ae_title": data.association.peer_ae_title,
            "destination_ae_title": data.move_destination,
            "association_id": data.association.id,
            "message_id": data.message_id,
            "query_level": data.query_level,
            "keys": dict(data.keys),
            "timeline": _with_entry(
                move,
                event,
                f"C-MOVE-RQ from {data.association.peer_ae_title} to {data.move_destination}",
            ),
        }
    )


def _completed(move: MoveState, event: ev.MoveCompleted) -> MoveState:
    data = event.data
    counts = data.counts
    info = describe_status(data.status, Service.QUERY_RETRIEVE)
    return move.model_copy(
        update={
            "destination_ae_title": move.destination_ae_title or data.move_destination,
            "expected": counts.completed + counts.failed + counts.warning + (counts.remaining or 0),
            "final_status": data.status,
            "final_category": data.status_category,
            "reported_failed": tuple(sorted(set(data.failed_sop_instance_uids))),
            "completed_at": data.completed_at,
            "timeline": _with_entry(
                move,
                event,
                f"final C-MOVE-RSP {info.label} {info.description}: "
                f"{counts.completed} completed, {counts.failed} failed, {counts.warning} warning",
            ),
        }
    )


def _response(
    move: MoveState, event: ev.CStoreResponseReceived | ev.CStoreResponseMissing
) -> MoveState:
    outcome = _outcome_of(event)
    current = move.instances.get(outcome.sop_instance_uid)
    update: dict[str, object] = {}
    if current is None or outcome.rank > current.rank:
        update["instances"] = {**move.instances, outcome.sop_instance_uid: outcome}
    if outcome.category != "success":
        update["timeline"] = _with_entry(
            move, event, f"{outcome.sop_instance_uid} attempt {outcome.attempt}: {outcome.reason}"
        )
    return move.model_copy(update=update) if update else move


def _outcome_of(event: ev.CStoreResponseReceived | ev.CStoreResponseMissing) -> InstanceOutcome:
    data = event.data
    if isinstance(event, ev.CStoreResponseReceived):
        info = describe_status(event.data.status, Service.STORAGE)
        category: Category = event.data.status_category
        status: int | None = event.data.status
        reason = f"{info.label} {info.description}"
    else:
        category, status = "missing", None
        reason = f"no response: {event.data.reason} ({event.data.detail})"
    return InstanceOutcome(
        sop_instance_uid=data.affected_sop_instance_uid,
        category=category,
        status=status,
        reason=reason,
        attempt=data.attempt,
        at=event.time,
        event_id=event.id,
    )


# -- what a state means --------------------------------------------------------------


def counts(move: MoveState) -> ev.SubOperationCounts:
    """Completed, warning and failed sub-operations by their latest attempt; what remains."""
    latest = [outcome.category for outcome in move.instances.values()]
    failed_elsewhere = [uid for uid in move.reported_failed if uid not in move.instances]
    failed = sum(category in FAILED for category in latest) + len(failed_elsewhere)
    accounted = len(move.instances) + len(failed_elsewhere)
    remaining = max(move.expected - accounted, 0) if move.expected is not None else None
    return ev.SubOperationCounts(
        remaining=remaining,
        completed=latest.count("success"),
        warning=latest.count("warning"),
        failed=failed,
    )


def outcome(move: MoveState, now: dt.datetime, stall_after: dt.timedelta) -> ev.MoveOutcome:
    """in_progress, completed, completed_with_failures, failed, cancelled or stalled.

    A move is finished once its final C-MOVE-RSP arrived and every sub-operation it
    counted is accounted for; a later retry can still turn failures into successes.
    ``failed`` is a move that could not run its sub-operations at all (unknown
    destination, unable to process); one whose sub-operations ran and failed,
    even all of them, is ``completed_with_failures``, with the failures listed.
    """
    tally = counts(move)
    if move.final_category == "cancel":
        return "cancelled"
    if move.final_category is not None and tally.remaining == 0:
        attempted = tally.completed + tally.warning + tally.failed
        if move.final_category == "failure" and attempted == 0:
            return "failed"
        return "completed" if tally.failed == 0 else "completed_with_failures"
    if move.last_event_at is not None and now - move.last_event_at > stall_after:
        return "stalled"
    return "in_progress"


def failed_instances(move: MoveState) -> tuple[ev.FailedInstance, ...]:
    """Every instance whose latest attempt failed, with its last status and attempts."""
    found = [
        ev.FailedInstance(
            sop_instance_uid=o.sop_instance_uid,
            status=o.status,
            reason=o.reason,
            attempts=o.attempt,
        )
        for o in move.instances.values()
        if o.category in FAILED
    ]
    found += [
        ev.FailedInstance(
            sop_instance_uid=uid,
            status=None,
            reason="listed failed by the final C-MOVE-RSP",
            attempts=1,
        )
        for uid in move.reported_failed
        if uid not in move.instances
    ]
    return tuple(sorted(found, key=lambda f: f.sop_instance_uid))


def progress_data(
    move: MoveState, now: dt.datetime, stall_after: dt.timedelta
) -> ev.MoveProgressData:
    """The derived events' payload for ``move``."""
    return ev.MoveProgressData(
        operation=ev.Operation(kind="move", id=move.move_id),
        node_id=move.node_id,
        requestor_ae_title=move.requestor_ae_title,
        destination_ae_title=move.destination_ae_title,
        expected=move.expected,
        counts=counts(move),
        outcome=outcome(move, now, stall_after),
        failed_instances=failed_instances(move),
        at=now,
    )
