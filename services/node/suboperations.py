"""What the Move SCP knows of each C-MOVE's sub-associations, and the events of its end.

A C-MOVE's C-STORE sub-operations go out on associations of their own. Which
instances got a C-STORE-RQ there, and whether the destination rejected the
association, decide what the final C-MOVE-RSP's failed instances were: never
sent (``dicom.cstore.unsent``, so the retrier can send them one by one) or sent
and answered (their response events say so). ``dimsebus.services.node.scp`` serves the
C-MOVE; the capture's handlers note here what its sub-associations did.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association

from dimsebus.schemas import events as ev
from dimsebus.schemas.limits import MAX_UIDS, chunked
from dimsebus.services.node import capture, facts, salvage
from dimsebus.services.node.association import failed_uids
from dimsebus.services.node.jobs import Retrieval, SubAssociations
from dimsebus.services.node.stamp import Stamp

log = logging.getLogger(__name__)


class SubOperations:
    """The sub-associations of the C-MOVEs a node serves, by operation id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._moves: dict[Any, SubAssociations] = {}

    def of(self, operation_id: Any) -> SubAssociations:
        """The sub-associations of one C-MOVE, noted from its first."""
        with self._lock:
            return self._moves.setdefault(operation_id, SubAssociations())

    def ended(self, operation_id: Any) -> SubAssociations:
        """What the sub-associations of a C-MOVE did, forgotten here: it has ended."""
        with self._lock:
            return self._moves.pop(operation_id, SubAssociations())


def completed_facts(
    assoc: Association,
    retrieval: Retrieval,
    message: Any,
    subs: SubOperations,
    labels: dict[str, str],
    stamp: Callable[[], Stamp],
) -> list[facts.Fact]:
    """The facts of a final C-MOVE-RSP or C-GET-RSP: unsent, left out, then completed."""
    command = message.command_set
    counts = ev.SubOperationCounts(
        remaining=command.get("NumberOfRemainingSuboperations"),
        completed=command.get("NumberOfCompletedSuboperations") or 0,
        failed=command.get("NumberOfFailedSuboperations") or 0,
        warning=command.get("NumberOfWarningSuboperations") or 0,
    )
    # An archive filled before UIDs were validated may list invalid ones: they are
    # named once in their own event, and the completed event goes out without them.
    failed, invalid = salvage.split_uids(failed_uids(assoc, message))
    data = retrieval.data
    details = {
        **{name: value for name, value in data.items() if name not in _KEYS},
        "counts": counts,
        "error_comment": command.get("ErrorComment"),
        "failed_sop_instance_uids": failed[:MAX_UIDS],  # the contract's cap per event
        "failed_sop_instance_uids_omitted": max(len(failed) - MAX_UIDS, 0),
    }
    move = retrieval.model is ev.MoveCompleted
    # Never-sent instances go first, in the same outbox write: whoever sees the
    # move completed has seen why its never-sent sub-operations failed.
    unsent = _unsent_by_move(retrieval, failed, command.Status, subs, labels, stamp) if move else []
    left_out = (
        [_left_out(retrieval, message, "FailedSOPInstanceUIDList", invalid, stamp())]
        if invalid
        else []
    )
    completed = facts.Completed(
        stamp(),
        "move" if move else "get",
        data["association"],
        data["operation"],
        data["message_id"],
        int(command.Status),
        details,
    )
    return [*unsent, *left_out, completed]


_KEYS = ("association", "operation", "message_id")
"""What a retrieval's facts carry as fields of their own, not among its details."""


def _left_out(
    retrieval: Retrieval, message: Any, element: str, invalid: tuple[str, ...], stamp: Stamp
) -> facts.Fact:
    """``dicom.message.invalid``'s fact, naming the ``invalid`` UIDs of a final response."""
    name = type(message).__name__.replace("_", "-")
    log.warning("%d invalid UIDs in %s left out of its event", len(invalid), name)
    data = retrieval.data
    left_out = salvage.left_out_facts(
        name,
        element,
        invalid,
        association_id=data["association"].id,
        message_id=data["message_id"],
        operation=data["operation"],
    )
    return facts.Invalid(stamp, left_out)


def _unsent_by_move(
    retrieval: Retrieval,
    failed: tuple[str, ...],
    status: int,
    subs: SubOperations,
    labels: dict[str, str],
    stamp: Callable[[], Stamp],
) -> list[facts.Fact]:
    """``dicom.cstore.unsent``'s facts for a move's instances that never got a C-STORE-RQ."""
    operation: ev.Operation = retrieval.data["operation"]
    ended = subs.ended(operation.id)
    # pynetdicom answers an unreachable destination with 0xA801 and no UID list.
    candidates = failed or (retrieval.uids if status == 0xA801 and not ended.sent else ())
    unsent = [uid for uid in salvage.split_uids(candidates)[0] if uid not in ended.sent]
    if not unsent or retrieval.originator is None:
        return []
    destination = retrieval.data["move_destination"]
    reason, detail = capture.unsent_reason(
        retrieval.destination_known, ended.rejection, bool(ended.sent), destination
    )
    return [
        facts.Unsent(
            stamp(),
            operation,
            destination,
            tuple(chunk),
            1,
            retrieval.originator,
            {**labels},
            reason,
            detail[:1024],
        )
        for chunk in chunked(unsent)
    ]
