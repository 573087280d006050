"""How a move reads to an operator or a script: the JSON of `dimsebus moves show --json`.

The API (``GET /moves/{id}``) serves these views as they are, and the CLI prints their
values through ``as_text``, so the two never disagree: a count that is not known yet
(no final response: ``expected``, ``counts.remaining``) is ``null`` in JSON and ``?`` on
a terminal, and a known 0 is 0 in both.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dimsebus.schemas import events as ev
from dimsebus.schemas.status import describe_status
from dimsebus.services.tracker.progress import (
    MoveState,
    counts,
    failed_instances,
    failure_reason,
    outcome,
    retried_instances,
)


def move_view(move: MoveState, now: dt.datetime, stall_after: dt.timedelta) -> dict[str, Any]:
    """Counts, outcome, failed instances and timeline of one move, as plain JSON data."""
    tally = counts(move)
    return {
        "move_id": str(move.move_id),
        "node_id": move.node_id,
        "requestor_ae_title": move.requestor_ae_title,
        "source_ae_title": source_ae_title(move),
        "destination_ae_title": move.destination_ae_title,
        "c_move": {"association_id": _text(move.association_id), "message_id": move.message_id},
        "query_level": move.query_level,
        "keys": move.keys,
        "outcome": outcome(move, now, stall_after, tally),
        "reason": failure_reason(move, tally),
        "revision": move.finished.revision if move.finished else None,
        "expected": move.expected,
        "counts": tally.model_dump(),
        "final_status": None if move.final_status is None else f"0x{move.final_status:04X}",
        "failed_instances": [
            {
                "sop_instance_uid": failed.sop_instance_uid,
                "status": None if failed.status is None else f"0x{failed.status:04X}",
                "reason": failed.reason,
                "attempts": failed.attempts,
                "next_attempt_at": _text(failed.next_attempt_at),
                "gave_up": failed.gave_up,
            }
            for failed in failed_instances(move)
        ],
        "retried_instances": [
            {
                "sop_instance_uid": retried.sop_instance_uid,
                "attempts": retried.attempt,
                "result": retried.category,
                "reason": retried.reason,
            }
            for retried in retried_instances(move)
        ],
        "started_at": _text(move.started_at),
        "last_event_at": _text(move.last_event_at),
        "completed_at": _text(move.completed_at),
        "events": len(move.seen),
        "responses": {
            "received": move.responses.get("received", 0),
            "invalid": move.responses.get("invalid", 0),
            "missing": move.responses.get("missing", 0),
        },
        "timeline": [{"at": _text(e.at), "what": e.what} for e in move.timeline],
    }


UNFINISHED = ("in_progress", "retrying")
"""The outcomes that turn ``stalled`` when no event comes for ``stall_after``."""


def source_ae_title(move: MoveState) -> str | None:
    """Where the sub-operations' instances come from: the archive a Move SCU move asked,
    else the AE title the C-MOVE-RQ called (the node's own)."""
    return move.archive.ae_title if move.archive is not None else move.called_ae_title


def settled_outcome(
    move: MoveState, tally: ev.SubOperationCounts | None = None
) -> tuple[str, bool]:
    """The move's outcome as of its last event, and whether it turns stalled if none follows.

    What the store keeps for the list's filters: whether it is stalled depends on the clock,
    so the list tells it from the last event's time when it reads the rows. ``tally``:
    ``counts(move)``, if the caller has it."""
    at = move.last_event_at or move.started_at or dt.datetime.min.replace(tzinfo=dt.UTC)
    tally = tally if tally is not None else counts(move)
    now = outcome(move, at, dt.timedelta(0), tally)
    if now not in UNFINISHED:
        return now, False
    if now == "in_progress":  # an unfinished move always stalls: no need to count again
        return now, True
    # retrying stalls only while awaiting a decision, not with an attempt scheduled
    return now, outcome(move, at + dt.timedelta(days=1), dt.timedelta(0), tally) == "stalled"


def move_row(
    move: MoveState, outcome_now: str, tally: ev.SubOperationCounts | None = None
) -> dict[str, Any]:
    """One move as a line of the web page's list: who, how far, how it ended, when.

    ``outcome_now``: its outcome (``outcome(move, now, stall_after)``), or as of its last
    event (``settled_outcome``) for the row the store keeps. ``tally``: ``counts(move)``,
    if the caller has it."""
    return {
        "move_id": str(move.move_id),
        "node_id": move.node_id,
        "requestor_ae_title": move.requestor_ae_title,
        "source_ae_title": source_ae_title(move),
        "destination_ae_title": move.destination_ae_title,
        "outcome": outcome_now,
        "expected": move.expected,
        "counts": (tally if tally is not None else counts(move)).model_dump(),
        "started_at": _text(move.started_at),
        "completed_at": _text(move.completed_at if outcome_is_final(move) else None),
        "last_event_at": _text(move.last_event_at),
    }


def live_row(move: MoveState, now: dt.datetime, stall_after: dt.timedelta) -> dict[str, Any]:
    """The move's row as of ``now`` (what the page's live feed sends), with when it turns
    stalled if no event comes (``stalls_at``)."""
    row = move_row(move, outcome(move, now, stall_after))
    stalls = settled_outcome(move)[1]
    return {**row, "stalls_at": stalls_at(move.last_event_at, stalls, stall_after)}


def stalls_at(
    last_event_at: dt.datetime | None, stalls: bool, stall_after: dt.timedelta
) -> str | None:
    """When a move that turns stalled without another event does (ISO), else None."""
    if not stalls or last_event_at is None:
        return None
    return (last_event_at + stall_after).isoformat()


def outcome_is_final(move: MoveState) -> bool:
    """Whether the move has had its final C-MOVE-RSP (or was interrupted)."""
    return move.final_category is not None


def status_meaning(status: str | None) -> str:
    """What a failed instance's status (``0xA700``) means for a C-STORE (PS3.4 B.2.3)."""
    if status is None:
        return "no status: no response came"
    try:
        return describe_status(int(status, 16)).description
    except ValueError:
        return "not a status"


UNKNOWN = "?"
"""How the CLI shows a value the view has as None (JSON null): not known yet."""


def as_text(value: object) -> str:
    """A view's value as the CLI prints it: None is ``?``; anything else, 0 too, as itself."""
    return UNKNOWN if value is None else str(value)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)
