"""The node as Move SCU: C-MOVE commands in, a remote archive asked to move (PS3.4 C.4.2).

A ``dimsebus.command.move`` from the node's queue makes the node open an
association to the remote archive (Study Root, STUDY/SERIES/IMAGE level) and
send one C-MOVE-RQ. Every C-MOVE-RSP becomes ``dicom.move.response.received``
(``dimsebus.services.node.moves``). While the move is open its Message ID is kept in
``OpenMoves``, so that when the node is its own destination the C-STORE-RQs
it receives for the move (Move Originator AE Title = the node's, Message ID =
the C-MOVE's) are recorded as ``dicom.cstore.response.sent`` by the Storage SCP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, sop_class

from dimsebus.schemas import events as ev
from dimsebus.services.errors import DimsebusError, Unprocessable
from dimsebus.services.node import moves, salvage
from dimsebus.services.node.archive import Archive
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.facts import MoveResponded, PullUnsent
from dimsebus.services.node.jobs import Job
from dimsebus.services.node.tls import association_tls

log = logging.getLogger(__name__)

STUDY_ROOT_MOVE = str(sop_class.StudyRootQueryRetrieveInformationModelMove)  # type: ignore[attr-defined]
STUDY_ROOT_FIND = str(sop_class.StudyRootQueryRetrieveInformationModelFind)  # type: ignore[attr-defined]


class MoveError(DimsebusError):
    """The C-MOVE could not be requested: no association with the remote archive.

    ``reason`` says so in ``dicom.cstore.unsent`` terms, for a re-issued C-MOVE.
    """

    def __init__(self, message: str, reason: ev.UnsentReason = "unreachable") -> None:
        super().__init__(message)
        self.reason: ev.UnsentReason = reason


class OpenMoves:
    """The node's C-MOVEs awaiting their final response, by Message ID (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._moves: dict[int, ev.MoveCommandData] = {}
        self._last = 0

    def open(self, data: ev.MoveCommandData) -> int:
        """A Message ID for a new C-MOVE, unused by any open one."""
        with self._lock:
            self._last = moves.next_message_id(self._last, self._moves)
            self._moves[self._last] = data
            return self._last

    def close(self, message_id: int) -> None:
        """The C-MOVE got its final response (or none will come)."""
        with self._lock:
            self._moves.pop(message_id, None)

    def get(self, message_id: int, /) -> ev.MoveCommandData | None:
        """The open C-MOVE with ``message_id``, if any."""
        with self._lock:
            return self._moves.get(message_id)


@dataclass(frozen=True, slots=True)
class MoveSummary:
    """How a C-MOVE ended: its Message ID, final status and counts (None: no final response)."""

    message_id: int
    final: moves.MoveResponse | None
    command: ev.MoveCommandData | None = None


class Mover:
    """Sends C-MOVE-RQs for move commands and captures every C-MOVE-RSP."""

    def __init__(
        self, settings: NodeSettings, capture_: Capture, open_moves: OpenMoves | None = None
    ) -> None:
        self.settings = settings
        self.capture = capture_
        self.open_moves = open_moves or OpenMoves()

    def move(self, data: ev.MoveCommandData) -> list[MoveSummary]:
        """Ask the remote archive to move (blocking: a worker thread); one event per response.

        IMAGE level without the series, which a hierarchical archive needs, first asks
        the archive (C-FIND, SERIES then IMAGE level) which series each instance is
        in, and sends one C-MOVE-RQ per series on the same association.
        """
        source = data.source
        job = Job(data.operation, labels={**self.settings.labels, **data.labels})
        assoc = self._ae().associate(
            source.host,
            source.port,
            ae_title=source.ae_title,
            evt_handlers=self.capture.handlers(job),
            tls_args=association_tls(self.settings, source.host, source.tls),
        )
        if not assoc.is_established:
            raise MoveError(
                f"no association with {source.ae_title}@{source.host}:{source.port} "
                f"(rejected, aborted or unreachable)"
            )
        try:
            commands = [data]
            if data.query_level == "IMAGE" and not data.series_instance_uids:
                commands = moves.by_series(data, _series_of(assoc, data.study_instance_uid))
            # One C-MOVE-RQ after the other; none on an association the archive ended.
            return [
                self._move_one(assoc, command)
                if assoc.is_established
                else MoveSummary(0, None, command)
                for command in commands
            ]
        except ValueError as exc:  # moves.MoveCommandError: not held in the study, and so on
            raise MoveError(str(exc), "not_found") from exc
        finally:
            if assoc.is_established:
                assoc.release()

    def _move_one(self, assoc: Any, data: ev.MoveCommandData) -> MoveSummary:
        message_id = self.open_moves.open(data)
        final: moves.MoveResponse | None = None
        try:
            responses = assoc.send_c_move(
                moves.move_identifier(data),
                data.destination_ae_title,
                STUDY_ROOT_MOVE,
                msg_id=message_id,
            )
            for status, identifier in responses:
                if not status:  # no response: timeout, abort; the capture reports the end
                    break
                response = _response(status, identifier)
                ref = self.capture.state(assoc).ref
                stamp = self.capture.stamp()
                self.capture.spool(MoveResponded(stamp, data, ref, message_id, response))
                final = response if response.status not in moves.PENDING else final
        finally:
            self.open_moves.close(message_id)
        return MoveSummary(message_id, final, data)

    async def handle(self, event: ev.Event, archive: Archive) -> None:
        """Run one move command; a redelivered command that was done is skipped."""
        if not isinstance(event, ev.MoveCommand):
            raise Unprocessable(f"the mover takes dimsebus.command.move, not {event.type}")
        if event.data.node_id != self.settings.node_id:
            raise Unprocessable(
                f"command for node {event.data.node_id!r} reached node {self.settings.node_id!r}"
            )
        if not archive.claim_command(str(event.id)):
            log.info("move command %s was already executed; skipped", event.id)
            return
        try:
            await asyncio.to_thread(self.move, event.data)
        except MoveError as exc:  # parked with the reason; a requeue runs it again
            raise Unprocessable(f"move {event.data.operation.id}: {exc}") from exc
        archive.command_done(str(event.id))

    async def reissue(self, command: ev.ResendSubOperations, archive: Archive) -> None:
        """Retry a pull: C-MOVE exactly the failed instances again, at IMAGE level.

        The same operation and the command's attempt, so the tracker folds the
        responses into the same move. When the archive cannot be asked, or a
        C-MOVE-RQ gets no final response, ``dicom.cstore.unsent`` names its
        instances (and the archive), and the retrier decides again.
        """
        if command.data.node_id != self.settings.node_id:
            raise Unprocessable(
                f"command for node {command.data.node_id!r} reached node {self.settings.node_id!r}"
            )
        if not archive.claim_command(str(command.id)):
            log.info("resend command %s was already executed; skipped", command.id)
            return
        try:
            data = moves.reissued(command)
        except moves.MoveCommandError as exc:
            raise Unprocessable(str(exc)) from exc
        source = f"{data.source.ae_title}@{data.source.host}:{data.source.port}"
        log.info(
            "re-issuing a C-MOVE of %d instance(s) of %s from %s (attempt %d)",
            len(command.data.sop_instance_uids),
            data.operation.id,
            source,
            data.attempt,
        )
        unsent: list[PullUnsent] = []
        try:
            summaries = await asyncio.to_thread(self.move, data)
        except MoveError as exc:
            detail = f"C-MOVE from {source}: {exc}"
            unsent.append(PullUnsent(self.capture.stamp(), data, exc.reason, detail))
        else:
            detail = f"no final C-MOVE-RSP from {source} (timeout or abort)"
            unsent += [
                PullUnsent(self.capture.stamp(), s.command, "association_lost", detail)
                for s in summaries
                if s.final is None and s.command is not None
            ]
        if unsent:
            self.capture.spool(*unsent)
        archive.command_done(str(command.id))

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.acse_timeout = self.settings.acse_timeout
        ae.connection_timeout = self.settings.acse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.add_requested_context(STUDY_ROOT_MOVE)
        ae.add_requested_context(STUDY_ROOT_FIND)
        return ae


def _series_of(assoc: Any, study: str) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID of every instance of ``study`` at the archive."""
    found: dict[str, str] = {}
    for series in _found(assoc, moves.series_query(study), "SeriesInstanceUID"):
        for uid in _found(assoc, moves.instance_query(study, series), "SOPInstanceUID"):
            found[uid] = series
    return found


def _found(assoc: Any, identifier: Dataset, key: str) -> list[str]:
    """One C-FIND's matches' ``key`` values; a failed or missing response is a MoveError."""
    values = []
    for status, match in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
        code = int(status.Status) if status else None
        if code in moves.PENDING and match is not None and match.get(key):
            values.append(str(match.get(key)))
        elif code != 0x0000 and code not in moves.PENDING:
            what = "no response" if code is None else f"status 0x{code:04X}"
            raise MoveError(f"C-FIND ({identifier.QueryRetrieveLevel} level) failed: {what}")
    return values


def _response(status: Dataset, identifier: Any) -> moves.MoveResponse:
    failed: Any = getattr(identifier, "FailedSOPInstanceUIDList", None) if identifier else None
    uids = [failed] if isinstance(failed, str) else list(failed or [])
    comment = status.get("ErrorComment")
    return moves.MoveResponse(
        status=int(status.Status),
        remaining=status.get("NumberOfRemainingSuboperations"),
        completed=status.get("NumberOfCompletedSuboperations"),
        failed=status.get("NumberOfFailedSuboperations"),
        warning=status.get("NumberOfWarningSuboperations"),
        error_comment=salvage.text(str(comment), 1024) if comment else None,
        failed_uids=salvage.split_uids(str(uid) for uid in uids if uid)[0],
    )
