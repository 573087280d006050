"""How a move reads to an operator or a script: the JSON of `dimsebus moves show --json`.

The API (``GET /moves/{id}``) serves these views as they are, and the CLI prints their
values through ``as_text``, so the two never disagree: a count that is not known yet
(no final response: ``expected``, ``counts.remaining``) is ``null`` in JSON and ``?`` on
a terminal, and a known 0 is 0 in both.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

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
        "destination_ae_title": move.destination_ae_title,
        "c_move": {"association_id": _text(move.association_id), "message_id": move.message_id},
        "query_level": move.query_level,
        "keys": move.keys,
        "outcome": outcome(move, now, stall_after),
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
