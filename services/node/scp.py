"""The node's SCP roles over its archive: Storage, Find, Move and Get (PS3.4 B, C).

Each handler is a thin pynetdicom generator or function; the matching is
``dimsebus.services.node.query`` and the capture is ``dimsebus.services.node.capture_shell``.
"""

from __future__ import annotations

import datetime as dt
import logging
import weakref
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any, Literal

from pydicom.dataset import Dataset
from pynetdicom import evt

from dimsebus.schemas import events as ev
from dimsebus.schemas.limits import MAX_KEY_NAME_LENGTH, MAX_KEY_VALUE_LENGTH, MAX_KEYS, clip
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.node import admission, headers, moves, pynetdicom_internals
from dimsebus.services.node.archive import Archive, Refused, StoredInstance
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.contexts import storage_contexts
from dimsebus.services.node.facts import Requested, ResponseSent
from dimsebus.services.node.jobs import Job, Retrieval
from dimsebus.services.node.journal import MoveJournal
from dimsebus.services.node.mover import OpenMoves
from dimsebus.services.node.query import QueryError, build_query
from dimsebus.services.node.stamp import Stamp
from dimsebus.services.node.tls import association_tls

log = logging.getLogger(__name__)


class ArchiveSCP:
    """Storage, Find, Move and Get service over one archive."""

    def __init__(
        self,
        settings: NodeSettings,
        archive: Archive,
        capture_: Capture,
        journal: MoveJournal | None = None,
        open_moves: OpenMoves | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.capture = capture_
        self.journal = journal
        self.open_moves = open_moves
        # the C-GET associations whose send_c_store sends files (send_stored_files)
        self._sending_files: weakref.WeakSet[Any] = weakref.WeakSet()

    def handlers(self) -> list[tuple[Any, ...]]:
        """The service handlers to bind on accepted associations."""
        return [
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_C_FIND, self.on_c_find),
            (evt.EVT_C_MOVE, self.on_c_move),
            (evt.EVT_C_GET, self.on_c_get),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
        ]

    def on_c_store(self, event: evt.Event) -> int | Dataset:
        """Store, and record the answer if the C-STORE-RQ is a sub-operation of the node's
        own C-MOVE (``dimsebus.services.node.mover``)."""
        status = self._store(event)
        if self.open_moves is not None:
            try:
                self._note_own_move(event, status)
            except Exception:  # the store's answer stands; the event is what is lost
                log.exception("cannot record the C-STORE of the node's own C-MOVE")
        return status

    def _note_own_move(self, event: evt.Event, status: int | Dataset) -> None:
        request: Any = event.request
        assert self.open_moves is not None
        move = moves.move_of_store(
            self.settings.ae_title,
            request.MoveOriginatorApplicationEntityTitle,
            request.MoveOriginatorMessageID,
            self.open_moves,
        )
        if move is None:
            return
        uid = str(request.AffectedSOPInstanceUID)
        dataset = event.dataset if isinstance(status, int) and status == 0 else None
        study = str(dataset.get("StudyInstanceUID", "")) or None if dataset else None
        patient = str(dataset.get("PatientID", "")) or None if dataset else None
        subject = self.capture.subjects([(uid, study, patient)])[uid]
        code, comment = (status, None) if isinstance(status, int) else _status_values(status)
        store = moves.ReceivedStore(
            association=self.capture.state(event.assoc).ref,
            presentation_context_id=event.context.context_id,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            message_id=request.MessageID,
            affected_sop_class_uid=str(request.AffectedSOPClassUID),
            affected_sop_instance_uid=uid,
            originator_message_id=request.MoveOriginatorMessageID,
            requested_at=event.timestamp.astimezone(dt.UTC),
            status=code,
            error_comment=comment,
            study_instance_uid=subject.study_instance_uid,
            patient_id=subject.patient_id,
        )
        answered = ResponseSent(
            self.capture.stamp(),
            move.operation,
            move.attempt,
            dict(move.labels),
            self.settings.ae_title,
            store,
        )
        self.capture.spool(answered)

    def _store(self, event: evt.Event) -> int | Dataset:
        """Store into the archive, or answer why not (PS3.4 B.2.3; ``node.admission``).

        Invalid UIDs 0xC000, a data set that is not the request's 0xA900, another
        patient's instance 0x0111, no space 0xA700, another write error 0x0110; each
        with an Error Comment naming the element, never repeating the peer's value.
        """
        request: Any = event.request
        affected = (str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            self.archive.store(
                dataset, affected=affected, overwrite=self.settings.overwrite_instances
            )
        except Refused as exc:
            log.warning("C-STORE refused with 0x%04X: %s", exc.refusal.status, exc.refusal.comment)
            return _refusal(exc.refusal)
        except Exception:
            log.exception("cannot store instance")
            return _status(0xC000, "cannot decode or store the data set")
        return 0x0000

    def on_c_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """Yield one pending response per match at the requested level."""
        identifier = event.identifier
        try:
            query = build_query(str(identifier.get("QueryRetrieveLevel", "")), _keys(identifier))
            matches = self.archive.find(query)
        except QueryError as exc:
            yield _status(0xA900, str(exc)), None
            return
        for match in matches:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            answer = Dataset()
            answer.QueryRetrieveLevel = query.level
            for keyword in _keys(identifier):
                setattr(answer, keyword, match.get(keyword, ""))
            yield 0xFF00, answer

    def on_c_move(self, event: evt.Event) -> Iterator[Any]:
        """Resolve the destination, then yield the matching instances for sub-operations."""
        request: Any = event.request
        assoc = event.assoc
        destination_ae = str(request.MoveDestination).strip()
        destination = self.settings.destinations.get(destination_ae)
        instances = self._resolve(event)
        operation = ev.Operation(kind="move", id=new_id())
        data = self._requested(event, operation)
        requested = _requested_fact(
            "move", {**data, "move_destination": destination_ae}, self.capture.stamp()
        )
        if self.journal is not None and destination is not None and instances:
            # its sub-operations are journalled from here (dimsebus.services.node.recovery)
            self.capture.spool_opening(requested, [i.sop_instance_uid for i in instances])
        else:
            self.capture.spool(requested)
        state = self.capture.state(assoc)
        state.retrievals[request.MessageID] = Retrieval(
            ev.MoveCompleted,
            {**_completed_base(data), "move_destination": destination_ae},
            uids=tuple(i.sop_instance_uid for i in instances or ()),
            destination_known=destination is not None,
            originator=ev.MoveOriginator(
                ae_title=state.ref.peer_ae_title, message_id=request.MessageID
            ),
        )
        if destination is None or instances is None:
            log.warning("C-MOVE to unknown destination %r", destination_ae)
            yield None, None
            return
        originator = state.retrievals[request.MessageID].originator
        assert originator is not None
        job = Job(
            operation,
            originator,
            labels=dict(self.settings.labels),
            subjects=self.capture.subjects(_subjects(instances)),
        )
        handlers = [
            *self.capture.handlers(job),
            (evt.EVT_ESTABLISHED, fix_move_originator, [originator]),
            (evt.EVT_ESTABLISHED, send_stored_files),
        ]
        yield (
            destination.host,
            destination.port,
            {
                "contexts": storage_contexts(
                    (i.sop_class_uid, i.transfer_syntax_uid) for i in instances
                ),
                "evt_handlers": handlers,
                "tls_args": association_tls(self.settings, destination.host, destination.tls),
            },
        )
        yield len(instances)
        yield from _pending_datasets(event, instances, _header)

    def on_c_get(self, event: evt.Event) -> Iterator[Any]:
        """Yield the matching instances; pynetdicom sends them on the requestor's association."""
        request: Any = event.request
        instances = self._resolve(event)
        operation = ev.Operation(kind="get", id=new_id())
        data = self._requested(event, operation)
        self.capture.spool(_requested_fact("get", data, self.capture.stamp()))
        state = self.capture.state(event.assoc)
        state.retrievals[request.MessageID] = Retrieval(ev.GetCompleted, _completed_base(data))
        state.job = Job(
            operation,
            None,
            labels=dict(self.settings.labels),
            subjects=self.capture.subjects(_subjects(instances or [])),
        )
        if instances is None:
            yield 0
            return
        yield len(instances)
        if str(event.context.abstract_syntax) == pynetdicom_internals.WITHOUT_BULK_DATA:
            # pynetdicom takes the bulk data out of what it is given: the whole data set
            yield from _pending_datasets(event, instances, StoredInstance.read)
            return
        if event.assoc not in self._sending_files:
            self._sending_files.add(event.assoc)
            send_files_as_stored(event.assoc)
        yield from _pending_datasets(event, instances, _header)

    def _resolve(self, event: evt.Event) -> list[StoredInstance] | None:
        identifier = event.identifier
        try:
            query = build_query(str(identifier.get("QueryRetrieveLevel", "")), _keys(identifier))
        except QueryError as exc:
            log.warning("cannot resolve retrieve identifier: %s", exc)
            return None
        return self.archive.instances(query)

    def _requested(self, event: evt.Event, operation: ev.Operation) -> dict[str, Any]:
        request: Any = event.request
        identifier = event.identifier
        return {
            "association": self.capture.state(event.assoc).ref,
            "message_id": request.MessageID,
            "operation": operation,
            "affected_sop_class_uid": str(request.AffectedSOPClassUID),
            "query_level": str(identifier.get("QueryRetrieveLevel", "STUDY")),
            "keys": recorded_keys(_keys(identifier)),
            "priority": int(request.Priority or 0),
            "requested_at": utc_now(),
        }


def fix_move_originator(event: evt.Event, originator: ev.MoveOriginator) -> None:
    """Make the Move SCP's C-STORE-RQs carry the C-MOVE requestor's AE title (PS3.7 C.4.2).

    pynetdicom's Move SCP passes its own AE title as Move Originator AE Title;
    PS3.7 9.1.1.1 says it is the AE that invoked the C-MOVE. The sub-association
    is ours, so its ``send_c_store`` is wrapped to pass the right one
    (``pynetdicom_internals.pass_move_originator``).
    """
    pynetdicom_internals.pass_move_originator(
        event.assoc, originator.ae_title, originator.message_id
    )


def send_stored_files(event: evt.Event) -> None:
    """Send the Move SCP's sub-operations from their files (``send_files_as_stored``).

    The Move SCP's thread sends one C-STORE-RQ at a time on this association, and
    nothing else until its release: a request sent as a file's bytes is written to the
    socket by that thread (``pynetdicom_internals.write_file_requests_on_caller``), as
    the sender's are. Not on a C-GET's association, where the C-GET-RSPs that
    pynetdicom queues for its DUL thread go out between the C-STOREs.
    """
    send_files_as_stored(event.assoc)
    pynetdicom_internals.write_file_requests_on_caller(event.assoc)


def send_files_as_stored(assoc: Any) -> None:
    """Make a retrieve's C-STOREs on ``assoc`` send the file of each header it yields.

    The Move and Get SCPs yield ``headers.read_header`` data sets, not decoded files:
    ``headers.send_as_stored`` sends each file as its bytes when ``assoc`` accepted
    its own transfer syntax, and reads it in full otherwise.
    """
    pynetdicom_internals.send_paths_as_stored()
    accepted = headers.accepted_by(assoc)
    pynetdicom_internals.wrap_retrieve_stores(
        assoc, lambda send: headers.send_as_stored(send, accepted)
    )


def _header(instance: StoredInstance) -> Dataset:
    return headers.read_header(instance.path)


def _pending_datasets(
    event: evt.Event, instances: list[StoredInstance], read: Callable[[StoredInstance], Dataset]
) -> Iterator[tuple[int, Any]]:
    for instance in instances:
        if event.is_cancelled:
            yield 0xFE00, None
            return
        try:
            yield 0xFF00, read(instance)
        except Exception as exc:
            log.error("cannot read %s: %s", instance.path, exc)
            yield 0xFF00, None


def _subjects(instances: list[StoredInstance]) -> Iterator[tuple[str, str | None, str | None]]:
    return ((i.sop_instance_uid, i.study_instance_uid, i.patient_id) for i in instances)


def _requested_fact(kind: Literal["move", "get"], data: dict[str, Any], stamp: Stamp) -> Requested:
    """The fact of a C-MOVE-RQ or C-GET-RQ, of its event's ``data``."""
    details = {k: v for k, v in data.items() if k not in ("association", "operation", "message_id")}
    return Requested(
        stamp, kind, data["association"], data["operation"], data["message_id"], details
    )


def _completed_base(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("association", "message_id", "operation")}


def recorded_keys(keys: dict[str, str]) -> dict[str, str]:
    """The identifier's non-empty keys as its event records them: a peer chooses how many
    and how long, the contract caps both (``dimsebus.schemas.limits``)."""
    kept = ((name, value) for name, value in keys.items() if value)
    return {
        clip(name, MAX_KEY_NAME_LENGTH): clip(value, MAX_KEY_VALUE_LENGTH)
        for name, value in islice(kept, MAX_KEYS)
    }


def _keys(identifier: Dataset) -> dict[str, str]:
    return {
        element.keyword: "" if element.value is None else str(element.value)
        for element in identifier
        if element.keyword and element.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")
    }


def _refusal(refusal: admission.Refusal) -> Dataset:
    """A C-STORE-RSP status with Error Comment and, if named, Offending Element (PS3.7 C.4)."""
    status = _status(refusal.status, refusal.comment)
    if refusal.element is not None:
        status.OffendingElement = [refusal.element]
    return status


def _status_values(status: Dataset) -> tuple[int, str | None]:
    comment = status.get("ErrorComment")
    return int(status.Status), str(comment) if comment else None


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
