"""What the node says, when it starts again, about the C-MOVEs a crash cut off (pure).

The C-MOVE-RQ's association died with the node, so no final C-MOVE-RSP was
ever sent. Its instances without a response event are reported as
``dicom.cstore.unsent`` (reason ``node_stopped``; the one in flight at the
crash may have reached the destination, but its response never reached the
node), so that the retrier can send them again, and the move itself as
``dicom.move.interrupted``, so that the tracker can account for it.
"""

from __future__ import annotations

from collections.abc import Callable

from dimsebus.schemas import events as ev
from dimsebus.schemas.envelope import CloudEvent
from dimsebus.schemas.limits import chunked
from dimsebus.services.node.capture import Stamp, unsent_event
from dimsebus.services.node.journal import OpenMove
from dimsebus.services.node.salvage import split_uids

UNSENT_CHUNK = 1000  # instances per unsent event: a 10,000-instance move is 10 events


def interrupted_events(
    move: OpenMove, labels: dict[str, str], stamp: Callable[[], Stamp]
) -> list[CloudEvent]:
    """``dicom.cstore.unsent`` for the unanswered instances, then ``dicom.move.interrupted``."""
    data = move.requested.data
    assert isinstance(data, ev.MoveRequestedData)
    unanswered = move.unanswered
    detail = "the node stopped before these sub-operations got a response"
    originator = ev.MoveOriginator(
        ae_title=data.association.peer_ae_title, message_id=data.message_id
    )
    # An archive filled before UIDs were validated may hold invalid ones, which no event
    # can carry (nor a resend request): they are counted in ``unanswered`` only.
    resendable = split_uids(unanswered)[0]
    unsent = [
        unsent_event(
            data.operation,
            data.move_destination,
            list(chunk),
            1,
            originator,
            labels,
            "node_stopped",
            detail,
            stamp(),
        )
        for chunk in chunked(resendable, UNSENT_CHUNK)
    ]
    now = stamp()
    interrupted = ev.MoveInterrupted.model_validate(
        {
            "id": now.id,
            "source": now.source,
            "time": now.time,
            "subject": str(data.operation.id),
            "data": ev.MoveInterruptedData(
                association=data.association,
                message_id=data.message_id,
                operation=data.operation,
                move_destination=data.move_destination,
                matched=len(move.matched),
                unanswered=len(unanswered),
                detail=f"the node stopped before the final C-MOVE-RSP; {len(unanswered)} of "
                f"{len(move.matched)} sub-operations got no response",
                interrupted_at=now.time,
            ),
        }
    )
    return [*unsent, interrupted]
