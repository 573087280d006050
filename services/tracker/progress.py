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
from collections import Counter
from collections.abc import Iterator, Sequence
from operator import attrgetter
from uuid import UUID

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.limits import MAX_FAILED_INSTANCES, chunked, clip
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.tracker import pulls  # Move SCU moves

# Re-exported: the tracker's shell, store, views and tests import the state from here.
from dimsebus.services.tracker.state import Category as Category
from dimsebus.services.tracker.state import FinishMark as FinishMark
from dimsebus.services.tracker.state import InstanceOutcome as InstanceOutcome
from dimsebus.services.tracker.state import MoveKey as MoveKey
from dimsebus.services.tracker.state import MoveState as MoveState
from dimsebus.services.tracker.state import RetryMark as RetryMark
from dimsebus.services.tracker.state import TimelineEntry as TimelineEntry
from dimsebus.services.tracker.state import with_outcomes as with_outcomes

FAILED: frozenset[str] = frozenset({"failure", "cancel", "missing", "unsent"})
# Failures the retrier decides about (its queue's bindings): a cancelled sub-operation is not.
DECIDED_BY_RETRIER: frozenset[str] = frozenset({"failure", "missing", "unsent"})
# Reasons a move's sub-operations could not be sent that no retry can fix (the retrier's
# policy gives them up at once): the move was refused as a whole.
REFUSED_UNSENT: frozenset[str] = frozenset({"unknown_destination", "rejected_permanent"})
_category = attrgetter("category")
TERMINAL: frozenset[str] = frozenset(
    {"completed", "completed_with_failures", "failed", "cancelled"}
)


# What the node and the retrier report about a move; the tracker's own events are not folded.
NODE_EVENTS = (
    ev.MoveRequested,
    ev.MoveCompleted,
    ev.MoveInterrupted,
    ev.CStoreResponseReceived,
    ev.CStoreResponseMissing,
    ev.CStoreUnsent,
    ev.MessageInvalid,
)
RETRY_EVENTS = (ev.RetryScheduled, ev.RetryExhausted)


def move_key(event: CloudEvent) -> MoveKey | None:
    """The move an event belongs to, or None for events that are not about a C-MOVE.

    The node's events name it by their source; the retrier's by the node id they carry.
    """
    if isinstance(event, pulls.PULL_EVENTS):  # the node's own C-MOVEs, as Move SCU
        return pulls.pull_key(event)
    if isinstance(event, NODE_EVENTS):
        source = event.source
    elif isinstance(event, RETRY_EVENTS):
        source = f"dimsebus://node/{event.data.node_id}"
    else:
        return None
    operation = event.data.operation
    if operation is None:  # a dicom.message.invalid that no operation owns
        return None
    return (source, operation.id) if operation.kind == "move" else None


def apply(state: MoveState | None, event: CloudEvent) -> MoveState | None:
    """Fold one event into its move's state; a repeated event id changes nothing."""
    key = move_key(event)
    if key is None:
        return state
    move = state or MoveState(source=key[0], move_id=key[1])
    if event.id in move.seen:
        return move
    if isinstance(event, ev.CStoreResponseReceived | ev.CStoreResponseMissing):
        return _response(move, event)  # most events: one copy of the move, not three
    move = move.model_copy(update=_touched(move, event))
    match event:
        case ev.MoveRequested():
            return _requested(move, event)
        case ev.MoveCompleted():
            return _completed(move, event)
        case ev.MoveInterrupted():
            return _interrupted(move, event)
        case ev.CStoreUnsent():
            return _unsent(move, event)
        case ev.RetryScheduled() | ev.RetryExhausted():
            return _retry(move, event)
        case ev.MoveResponseReceived() | ev.CStoreResponseSent():
            return pulls.apply_pull(move, event)
        case ev.MessageInvalid():
            return _unnamed(move, event)
    return move


RESPONSES = (ev.CStoreResponseReceived, ev.CStoreResponseMissing)


def named_instances(event: CloudEvent) -> tuple[str, ...]:
    """The instances whose outcome folding ``event`` may change; it changes no other.

    What a batch changed is then found among its events' instances, not among all of a
    large move's (the store writes only those: a property test checks the bound).
    """
    match event:
        case ev.CStoreResponseReceived() | ev.CStoreResponseMissing() | ev.CStoreResponseSent():
            return (event.data.affected_sop_instance_uid,)
        case ev.CStoreUnsent():
            return tuple(event.data.sop_instance_uids)
        case ev.MoveResponseReceived():
            return (*(event.data.sop_instance_uids or ()), *event.data.failed_sop_instance_uids)
    return ()


def apply_all(state: MoveState | None, events: Sequence[CloudEvent]) -> MoveState | None:
    """Fold ``events`` in order, to the state ``apply`` one by one gives.

    A run of responses to the move copies its collections (events seen, instances,
    timeline) once, not once per event: a copy costs as much as the move is large, so
    one per event is quadratic over a large move.
    """
    at = 0
    while at < len(events):
        end = at
        while end < len(events) and _same_move_response(state, events[end]):
            end += 1
        if end > at:
            assert state is not None
            state, at = _responses(state, events[at:end]), end
        else:
            state, at = apply(state, events[at]), at + 1
    return state


def _same_move_response(state: MoveState | None, event: CloudEvent) -> bool:
    """A response to a sub-operation of ``state``'s move (``move_key``, for responses)."""
    if state is None or not isinstance(event, RESPONSES) or event.source != state.source:
        return False
    operation = event.data.operation
    return operation is not None and operation.kind == "move" and operation.id == state.move_id


def _responses(move: MoveState, events: Sequence[CloudEvent]) -> MoveState:
    """``_response`` of each event in turn, on one working copy of the move's collections."""
    # the ids new to the move, and its instances, copied once: a copy costs as much as the
    # move is large (the ids: once, by the union at the end)
    known, added, instances = move.seen, set[UUID](), dict(move.instances)
    responses, entries = dict(move.responses), list(move.timeline)
    started, last = move.started_at, move.last_event_at
    for event in events:
        if not isinstance(event, RESPONSES) or event.id in known or event.id in added:
            continue
        added.add(event.id)
        started = event.time if started is None or event.time < started else started
        last = event.time if last is None or event.time > last else last
        outcome, kind = _outcome_of(event), _response_kind(event)
        responses[kind] = responses.get(kind, 0) + 1
        current = instances.get(outcome.sop_instance_uid)
        if current is None or outcome.rank > current.rank:
            instances[outcome.sop_instance_uid] = outcome
        if outcome.category != "success":
            what = f"{outcome.sop_instance_uid} attempt {outcome.attempt}: {outcome.reason}"
            entries.append(TimelineEntry(at=event.time, event_id=event.id, what=what))
    if not added:
        return move  # every one a repeat
    update: dict[str, object] = {
        "seen": known | added,
        "started_at": started,
        "last_event_at": last,
        "responses": responses,
        "instances": instances,
    }
    if len(entries) != len(move.timeline):
        # sorted once: the order one sort per entry gives (each key is one event's)
        update["timeline"] = tuple(sorted(entries, key=lambda e: (e.at, str(e.event_id))))
    return move.model_copy(update=update)


def _touched(move: MoveState, event: CloudEvent) -> dict[str, object]:
    """What every event changes: the ids seen, the first and the last event's time."""
    started, last = move.started_at, move.last_event_at
    return {
        "seen": move.seen | {event.id},
        "started_at": event.time if started is None or event.time < started else started,
        "last_event_at": event.time if last is None or event.time > last else last,
    }


def _with_entry(move: MoveState, event: CloudEvent, what: str) -> tuple[TimelineEntry, ...]:
    entry = TimelineEntry(at=event.time, event_id=event.id, what=what)
    return tuple(sorted((*move.timeline, entry), key=lambda e: (e.at, str(e.event_id))))


def _requested(move: MoveState, event: ev.MoveRequested) -> MoveState:
    data = event.data
    return move.model_copy(
        update={
            "requestor_ae_title": data.association.peer_ae_title,
            "called_ae_title": data.association.local_ae_title,
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


def _interrupted(move: MoveState, event: ev.MoveInterrupted) -> MoveState:
    """The node stopped mid-move: no final response will come, so the move ends here."""
    data = event.data
    return move.model_copy(
        update={
            "destination_ae_title": move.destination_ae_title or data.move_destination,
            "expected": data.matched,
            "final_category": "failure",
            "completed_at": data.interrupted_at,
            "timeline": _with_entry(move, event, f"interrupted: {data.detail}"),
        }
    )


def _response(
    move: MoveState, event: ev.CStoreResponseReceived | ev.CStoreResponseMissing
) -> MoveState:
    outcome = _outcome_of(event)
    kind = _response_kind(event)
    update = _touched(move, event)
    update["responses"] = {**move.responses, kind: move.responses.get(kind, 0) + 1}
    current = move.instances.get(outcome.sop_instance_uid)
    if current is None or outcome.rank > current.rank:
        update["instances"] = {**move.instances, outcome.sop_instance_uid: outcome}
    if outcome.category != "success":
        what = f"{outcome.sop_instance_uid} attempt {outcome.attempt}: {outcome.reason}"
        update["timeline"] = _with_entry(move, event, what)
    return move.model_copy(update=update)


def _response_kind(event: ev.CStoreResponseReceived | ev.CStoreResponseMissing) -> str:
    """received; invalid (a response came, but without a usable Status); or missing."""
    if isinstance(event, ev.CStoreResponseReceived):
        return "received"
    return "invalid" if event.data.reason == "invalid_response" else "missing"


def _unsent(move: MoveState, event: ev.CStoreUnsent) -> MoveState:
    data = event.data
    reason = f"not sent: {data.reason} ({data.detail})"
    outcomes = [
        InstanceOutcome(
            sop_instance_uid=uid,
            category="unsent",
            status=None,
            reason=reason,
            attempt=data.attempt,
            at=event.time,
            event_id=event.id,
        )
        for uid in data.sop_instance_uids
    ]
    move = with_outcomes(move, outcomes)
    what = f"{len(outcomes)} instance(s) attempt {data.attempt}: {reason}"
    return move.model_copy(update={"timeline": _with_entry(move, event, what)})


def _retry(move: MoveState, event: ev.RetryScheduled | ev.RetryExhausted) -> MoveState:
    data = event.data
    if isinstance(event, ev.RetryScheduled):
        mark = RetryMark(attempt=data.attempt, retry_at=data.retry_at)
        what = f"retry attempt {data.attempt} at {data.retry_at:%H:%M:%S}" if data.retry_at else ""
    else:
        mark = RetryMark(attempt=data.attempt, gave_up=data.reason)
        what = f"gave up after attempt {data.attempt}: {data.reason}"
    marks = {
        uid: mark
        for uid in data.sop_instance_uids
        if (current := move.retries.get(uid)) is None or mark.rank > current.rank
    }
    count = len(data.sop_instance_uids)
    return move.model_copy(
        update={
            "retries": {**move.retries, **marks},
            "timeline": _with_entry(move, event, f"{count} instance(s): {what or data.reason}"),
        }
    )


def _unnamed(move: MoveState, event: ev.MessageInvalid) -> MoveState:
    """Sub-operations no per-instance event can name (invalid UIDs): counted, not named."""
    data = event.data
    count = data.count or 1
    what = f"{count} sub-operation(s) without a valid UID: {data.error}"
    return move.model_copy(
        update={"unnamed": move.unnamed + count, "timeline": _with_entry(move, event, what)}
    )


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


def may_be_final(move: MoveState) -> bool:
    """Whether ``outcome`` can say anything but in_progress or stalled: the final response
    came (or the node stopped mid-move). Before, no event of the move derives a finished."""
    return move.final_category is not None or (
        move.finished is not None and move.finished.outcome is not None
    )


# -- what a state means --------------------------------------------------------------


def categories(move: MoveState) -> Counter[str]:
    """How many of the move's instances have each category as their latest outcome."""
    return Counter(map(_category, move.instances.values()))  # counted in C


def counts(move: MoveState, latest: Counter[str] | None = None) -> ev.SubOperationCounts:
    """Completed, warning and failed sub-operations by their latest attempt; what remains.

    Once the final response came, sub-operations it counted that no event can name
    (the node reported them only as invalid UIDs) are failed, not remaining. A Move
    SCU move to another destination adds what its final response counts but does
    not name (``counted_*``) to the instances it names (the failed ones).
    ``latest``: ``categories(move)``, if the caller keeps it up to date.
    """
    latest = latest if latest is not None else categories(move)
    failed_elsewhere = [uid for uid in move.reported_failed if uid not in move.instances]
    failed = sum(latest[category] for category in FAILED) + len(failed_elsewhere)
    failed += move.counted_failed
    unnamed_done = move.counted_completed + move.counted_warning + move.counted_failed
    accounted = len(move.instances) + len(failed_elsewhere) + unnamed_done
    remaining = max(move.expected - accounted, 0) if move.expected is not None else None
    if remaining and move.final_category is not None and remaining <= move.unnamed:
        failed, remaining = failed + remaining, 0
    return ev.SubOperationCounts(
        remaining=remaining,
        completed=latest["success"] + move.counted_completed,
        warning=latest["warning"] + move.counted_warning,
        failed=failed,
    )


def outcome(
    move: MoveState,
    now: dt.datetime,
    stall_after: dt.timedelta,
    tally: ev.SubOperationCounts | None = None,
) -> ev.MoveOutcome:
    """in_progress, retrying, completed, completed_with_failures, failed, cancelled or stalled.

    A move is finished once its final C-MOVE-RSP arrived and every sub-operation it
    counted is accounted for; a later retry can still turn failures into successes.
    ``failed`` is a move refused as a whole: unable to process, an unknown
    destination (0xA801), a destination that rejected the association for good;
    nothing is retried. One whose sub-operations ran and failed, even all of them,
    is ``completed_with_failures``, with the failures listed, unless the retrier
    scheduled another attempt for one of them, or (``retries_on``) has not yet
    decided about one: then it is ``retrying``, or ``stalled`` when no decision
    came for ``stall_after``.
    """
    tally = tally if tally is not None else counts(move)  # the caller may have it
    stalled = move.last_event_at is not None and now - move.last_event_at > stall_after
    if move.final_category == "cancel":
        return "cancelled"
    if move.final_category is not None and tally.remaining == 0:
        if _refused_as_a_whole(move, tally):
            return "failed"
        if tally.failed == 0:
            return "completed"
        if _retry_pending(move):
            return "retrying"
        if move.retries_on and _undecided(move):
            return "stalled" if stalled else "retrying"
        return "completed_with_failures"
    return "stalled" if stalled else "in_progress"


def _refused_as_a_whole(move: MoveState, tally: ev.SubOperationCounts) -> bool:
    """No sub-operation could run, and none ever will: the move failed."""
    if move.pulled and move.expected == 0 and not (tally.completed or tally.warning):
        return True  # the archive matched nothing: no retry can find it
    if move.final_category != "failure" or tally.completed or tally.warning:
        return False
    # 0xCxxx: unable to process. 0xA801 alone is not enough when the node served the
    # move: pynetdicom answers an unreachable destination with it too, which a retry
    # can fix. An archive the node asked (a pull) says so of a destination it does
    # not know, and the retrier gives it up.
    status = move.final_status
    if tally.failed == 0 or (status is not None and status >> 12 == 0xC):
        return True
    if move.pulled and status == 0xA801:
        return True
    latest = list(move.instances.values())
    return bool(latest) and all(
        o.category == "unsent" and _unsent_reason(o) in REFUSED_UNSENT for o in latest
    )


def _unsent_reason(outcome: InstanceOutcome) -> str:
    """The UnsentReason in an unsent outcome's reason ("not sent: REASON (detail)")."""
    return outcome.reason.removeprefix("not sent: ").split(" ", 1)[0]


def failure_reason(move: MoveState, tally: ev.SubOperationCounts) -> str | None:
    """Why a move failed as a whole: the final response's status and why nothing was sent."""
    if not _refused_as_a_whole(move, tally):
        return None
    parts = []
    if move.final_status is not None:
        info = describe_status(move.final_status, Service.QUERY_RETRIEVE)
        parts.append(f"final C-MOVE-RSP {info.label} {info.description}")
    unsent = sorted({o.reason for o in move.instances.values() if o.category == "unsent"})
    parts += unsent[:1]
    return clip("; ".join(parts)) or "the move could not run"


def _undecided(move: MoveState) -> bool:
    """A failure of the latest attempt that the retrier has not decided about yet.

    An instance only the final response lists (attempt 1) is decided about too: the
    retrier decides from the node's event about it (still on its way when the node
    served the move: it reports every listed instance, sent or not) or, for a Move
    SCU move, from that final response itself. Failures a final response counts but
    does not name are final as counted: no decision can name them.
    """
    latest = [
        (o.sop_instance_uid, o.attempt)
        for o in move.instances.values()
        if o.category in DECIDED_BY_RETRIER
    ]
    latest += [(uid, 1) for uid in move.reported_failed if uid not in move.instances]
    return any(not _decided(move.retries.get(uid), attempt) for uid, attempt in latest)


def _decided(mark: RetryMark | None, attempt: int) -> bool:
    """Whether the retrier scheduled the attempt after ``attempt``, or gave it up."""
    if mark is None:
        return False
    if mark.gave_up is not None:
        return mark.attempt >= attempt
    return mark.attempt > attempt


def finish(
    move: MoveState, result: ev.MoveOutcome, tally: ev.SubOperationCounts
) -> tuple[MoveState, int | None]:
    """The move with its finish mark updated, and the revision of a finished to publish, if any.

    A final outcome is published once; the move leaving it (retrying again) and
    reaching a final outcome again, or its counts changing, is the next revision.
    """
    mark = move.finished
    if result not in TERMINAL:
        if mark is None or mark.outcome is None:
            return move, None
        reopened = FinishMark(revision=mark.revision, outcome=None, counts=None)
        return move.model_copy(update={"finished": reopened}), None
    if mark is not None and (mark.outcome, mark.counts) == (result, tally):
        return move, None
    revision = (mark.revision if mark else 0) + 1
    new = FinishMark(revision=revision, outcome=result, counts=tally)
    return move.model_copy(update={"finished": new}), revision


def retried_instances(move: MoveState) -> tuple[InstanceOutcome, ...]:
    """Instances that needed more than one attempt, with their latest result."""
    return tuple(
        sorted(
            (o for o in move.instances.values() if o.attempt > 1),
            key=lambda o: o.sop_instance_uid,
        )
    )


def _retry_pending(move: MoveState) -> bool:
    """Whether the retrier scheduled an attempt that has not reported back yet."""
    return any(f.next_attempt_at is not None for f in failed_instances(move))


def failed_instances(move: MoveState) -> tuple[ev.FailedInstance, ...]:
    """Every instance whose latest attempt failed: last status, attempts, what the retrier does."""
    found = [
        (o.sop_instance_uid, o.status, o.reason, o.attempt)
        for o in move.instances.values()
        if o.category in FAILED
    ]
    found += [
        (uid, None, "listed failed by the final C-MOVE-RSP", 1)
        for uid in move.reported_failed
        if uid not in move.instances
    ]
    return tuple(
        ev.FailedInstance(
            sop_instance_uid=uid,
            status=status,
            reason=clip(reason),
            attempts=attempts,
            next_attempt_at=_next_attempt_at(move.retries.get(uid), attempts),
            gave_up=_gave_up(move.retries.get(uid), attempts),
        )
        for uid, status, reason, attempts in sorted(found)
    )


def _next_attempt_at(mark: RetryMark | None, attempts: int) -> dt.datetime | None:
    if mark is None or mark.gave_up is not None or mark.attempt <= attempts:
        return None
    return mark.retry_at


def _gave_up(mark: RetryMark | None, attempts: int) -> str | None:
    if mark is None or mark.attempt < attempts or mark.gave_up is None:
        return None
    return clip(mark.gave_up)


def progress_data(
    move: MoveState, now: dt.datetime, stall_after: dt.timedelta
) -> ev.MoveProgressData:
    """The derived events' payload for ``move``: the first failed instances, the rest counted."""
    failed = failed_instances(move)
    tally = counts(move)
    return ev.MoveProgressData(
        operation=ev.Operation(kind="move", id=move.move_id),
        node_id=move.node_id,
        requestor_ae_title=move.requestor_ae_title,
        destination_ae_title=move.destination_ae_title,
        expected=move.expected,
        counts=tally,
        outcome=outcome(move, now, stall_after, tally),
        failed_instances=failed[:MAX_FAILED_INSTANCES],
        failed_instances_omitted=max(len(failed) - MAX_FAILED_INSTANCES, 0),
        at=now,
        reason=failure_reason(move, tally),
    )


def retry_commands(
    move: MoveState, source: str, now: dt.datetime, ids: Iterator[UUID]
) -> list[ev.ResendSubOperations]:
    """An operator's manual retry: resend every failed instance, one more attempt each."""
    if move.destination_ae_title is None:
        return []
    originator = (
        ev.MoveOriginator(ae_title=move.requestor_ae_title, message_id=move.message_id)
        if move.requestor_ae_title is not None and move.message_id is not None and not move.pulled
        else None
    )
    by_attempt: dict[int, list[str]] = {}
    for failed in failed_instances(move):
        by_attempt.setdefault(failed.attempts + 1, []).append(failed.sop_instance_uid)
    return [
        ev.ResendSubOperations.model_validate(
            {
                "id": next(ids),
                "source": source,
                "time": now,
                "subject": str(move.move_id),
                "data": ev.ResendData(
                    operation=ev.Operation(kind="move", id=move.move_id),
                    node_id=move.node_id,
                    sop_instance_uids=tuple(chunk),
                    destination_ae_title=move.destination_ae_title,
                    move_originator=originator,
                    attempt=attempt,
                    # a pull is asked of its archive again (None: sent from the node's own)
                    source=move.archive if move.study_instance_uid else None,
                    study_instance_uid=move.study_instance_uid if move.archive else None,
                ),
            }
        )
        for attempt, uids in sorted(by_attempt.items())
        for chunk in chunked(uids)
    ]
