"""The tracker's fold of the C-MOVEs the node sent as Move SCU (issue 18, item 3).

A move the node asked a remote archive for (``dimsebus.command.move``) is the
same ``MoveState`` as the C-MOVEs the node serves, keyed by the node's source and
the operation id, and gets the same states and outcome (``progress.outcome``).
Its C-MOVE-RSPs (``dicom.move.response.received``) say how many sub-operations
there are and how the move ended; when the node itself is the destination each
sub-operation is named by the node's answer to it (``dicom.cstore.response.sent``).
To another destination the responses only count the sub-operations and name
the failed ones. A final response to a C-MOVE that named its instances (IMAGE
level, and every re-issued C-MOVE of the retrier, attempt 2 or later) accounts
for each of them (``MoveResponseData.instance_outcomes``): a retried instance
that arrives turns its failure into a success. The first C-MOVE's final
response at STUDY or SERIES level gives its completed and warning counts, and
failures it counts but does not list (``counted_*`` in ``MoveState``), beside
the failed instances it lists (``reported_failed``), which the retrier decides
about.
"""

from __future__ import annotations

from typing import Literal

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.tracker import state
from dimsebus.services.tracker.state import MoveKey, MoveState, TimelineEntry

PULL_EVENTS = (ev.MoveResponseReceived, ev.CStoreResponseSent)


def pull_key(event: CloudEvent) -> MoveKey | None:
    """The move of a Move SCU event (to the node itself or to another destination)."""
    if isinstance(event, ev.MoveResponseReceived):
        return (event.source, event.data.operation.id)
    if isinstance(event, ev.CStoreResponseSent):
        return (event.source, event.data.operation.id)
    return None


def apply_pull(move: MoveState, event: CloudEvent) -> MoveState:
    """Fold one C-MOVE-RSP, or the node's answer to one of the move's C-STOREs."""
    if isinstance(event, ev.MoveResponseReceived):
        return _responded(move, event)
    if isinstance(event, ev.CStoreResponseSent):
        return _stored(move, event)
    return move


def _responded(move: MoveState, event: ev.MoveResponseReceived) -> MoveState:
    data = event.data
    counts = data.counts
    total = counts.completed + counts.failed + counts.warning + (counts.remaining or 0)
    named = data.instance_outcomes()
    update: dict[str, object] = {
        "requestor_ae_title": data.association.local_ae_title,
        "destination_ae_title": data.move_destination,
        "pulled": True,
        "archive": data.source or move.archive,
        "study_instance_uid": data.study_instance_uid or move.study_instance_uid,
    }
    elsewhere = data.move_destination != data.association.local_ae_title
    if elsewhere:  # no C-STORE of this move reaches the node: the responses only count
        update["counted_only"] = True
    if data.attempt == 1:  # a re-issued C-MOVE moves only some instances again
        update |= {"association_id": data.association.id, "message_id": data.message_id}
        if move.expected is None or data.final:
            update["expected"] = total
    if data.final and data.attempt == 1:
        update |= {
            "final_status": data.status,
            "final_category": data.status_category,
            "completed_at": data.responded_at,
        }
        if named:  # IMAGE level: each instance asked for is accounted for by name
            update["expected"] = min(total, len(named))
        else:  # STUDY or SERIES level: the listed failures, and counts
            update["reported_failed"] = tuple(sorted(set(data.failed_sop_instance_uids)))
            if elsewhere:
                update |= _counted(data)
    elif not data.final and data.attempt == 1:
        update["timeline"] = _first_pending(move, event)
    if data.final:
        update["timeline"] = _with_entry(move, event, _final_entry(data))
    move = move.model_copy(update=update)
    return _with_named(move, event, named) if named else move


def _final_entry(data: ev.MoveResponseData) -> str:
    counts, info = data.counts, describe_status(data.status, Service.QUERY_RETRIEVE)
    attempt = f" (attempt {data.attempt})" if data.attempt > 1 else ""
    return (
        f"final C-MOVE-RSP{attempt} from {data.association.peer_ae_title} {info.label} "
        f"{info.description}: {counts.completed} completed, {counts.failed} failed, "
        f"{counts.warning} warning"
    )


def _with_named(
    move: MoveState,
    event: ev.MoveResponseReceived,
    named: dict[str, Literal["success", "warning", "failure"]],
) -> MoveState:
    """The outcome a final response gives each instance its C-MOVE-RQ named (IMAGE level).

    An event about the instance itself (the node as destination) outranks it.
    """
    data = event.data
    info = describe_status(data.status, Service.QUERY_RETRIEVE)
    listed = set(data.failed_sop_instance_uids)
    outcomes = [
        state.InstanceOutcome(
            sop_instance_uid=uid,
            category=category,
            status=data.status if category == "failure" else None,
            reason=_named_reason(category, uid in listed, info.label, data.counts),
            attempt=data.attempt,
            at=event.time,
            event_id=event.id,
            counted=True,
        )
        for uid, category in sorted(named.items())
    ]
    return state.with_outcomes(move, outcomes)


def _named_reason(category: str, listed: bool, status: str, counts: ev.SubOperationCounts) -> str:
    if listed:
        return f"listed failed by the final C-MOVE-RSP ({status})"
    tally = f"{counts.completed} completed, {counts.warning} warning, {counts.failed} failed"
    if category == "failure":
        return f"not accounted for by the final C-MOVE-RSP ({status}: {tally})"
    return f"counted {category} by the final C-MOVE-RSP ({status}: {tally})"


def _first_pending(move: MoveState, event: ev.MoveResponseReceived) -> tuple[TimelineEntry, ...]:
    """The timeline with one "C-MOVE-RQ" entry: the earliest pending response's, in any order."""
    data = event.data
    what = f"C-MOVE-RQ to {data.association.peer_ae_title} for {data.move_destination}"
    entry = state.TimelineEntry(at=event.time, event_id=event.id, what=what)
    earlier = [e for e in move.timeline if e.what == what]
    if earlier and min(earlier[0], entry, key=lambda e: (e.at, str(e.event_id))) is earlier[0]:
        return move.timeline
    others = [e for e in move.timeline if e.what != what]
    return tuple(sorted((*others, entry), key=lambda e: (e.at, str(e.event_id))))


def _counted(data: ev.MoveResponseData) -> dict[str, object]:
    """What a final response to another destination counts but does not name."""
    listed = len(set(data.failed_sop_instance_uids))
    return {
        "counted_completed": data.counts.completed,
        "counted_warning": data.counts.warning,
        "counted_failed": max(data.counts.failed - listed, 0),
    }


def _stored(move: MoveState, event: ev.CStoreResponseSent) -> MoveState:
    data = event.data
    info = describe_status(data.status, Service.STORAGE)
    outcome = state.InstanceOutcome(
        sop_instance_uid=data.affected_sop_instance_uid,
        category=data.status_category,
        status=data.status,
        reason=f"{info.label} {info.description}",
        attempt=data.attempt,
        at=event.time,
        event_id=event.id,
    )
    current = move.instances.get(outcome.sop_instance_uid)
    if current is not None and outcome.rank <= current.rank:
        return move
    update: dict[str, object] = {"instances": {**move.instances, outcome.sop_instance_uid: outcome}}
    if outcome.category != "success":
        what = f"{outcome.sop_instance_uid} attempt {outcome.attempt}: {outcome.reason}"
        update["timeline"] = _with_entry(move, event, what)
    return move.model_copy(update=update)


def _with_entry(move: MoveState, event: CloudEvent, what: str) -> tuple[TimelineEntry, ...]:
    entry = state.TimelineEntry(at=event.time, event_id=event.id, what=what)
    return tuple(sorted((*move.timeline, entry), key=lambda e: (e.at, str(e.event_id))))
