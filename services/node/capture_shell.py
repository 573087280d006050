"""The thin pynetdicom shell of the capture: bind, record, join, spool.

pynetdicom calls these handlers on its association threads. They only read
the message, keep per-association state, call the pure functions of
``capture`` and append the events to the outbox: no broker, no awaiting. A
C-STORE's own work is done by the thread that sent it, while it waits for the
response and as it wakes with it (``Capture.on_conn_open``), not by the DUL
thread that pynetdicom also needs to send the next request.

pynetdicom logs an exception from a handler and carries on, so the event would
be lost: every handler is ``_guarded``, and whatever it raises is recorded as
``dicom.message.invalid`` (``services.node.salvage``) and logged instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from schemas import events as ev
from schemas.envelope import CloudEvent
from schemas.limits import MAX_UIDS, chunked
from services.bus.outbox import Outbox
from services.clock import new_id, utc_now
from services.metrics import CSTORE
from services.node import capture, pynetdicom_internals, salvage, storepair
from services.node.association import (
    ABORT_TEXT,
    abort_source,
    command_values,
    connection_handlers,
    failed_uids,
    read_values,
    reference,
    tags_of,
    transfer_syntax,
)
from services.node.capture import SentStore, Stamp, StoreResponse
from services.node.config import NodeSettings
from services.node.jobs import AssociationState, Job, Retrieval, SubAssociations, Subject
from services.node.storepair import Outstanding
from services.node.unsolicited import unsolicited_event

log = logging.getLogger(__name__)

_REJECT_SOURCES = {
    1: "service_user",
    2: "service_provider_acse",
    3: "service_provider_presentation",
}
_PENDING = (0xFF00, 0xFF01)
_RESPONSE_TAGS = tags_of(storepair.RESPONSE_KEYWORDS)
_REQUEST_FIELDS = tags_of(
    (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
    )
)


HandlerMethod = Callable[["Capture", evt.Event, Job | None], None]


def _guarded(handler: HandlerMethod) -> HandlerMethod:
    """``handler``, with anything it raises recorded as an event instead of lost."""

    @functools.wraps(handler)
    def guarded(self: Capture, event: evt.Event, job: Job | None) -> None:
        try:
            handler(self, event, job)
        except Exception as exc:
            self.on_failure(handler.__name__, event, exc)

    return guarded


class Capture:
    """Turns every DIMSE message the node exchanges into events in the outbox."""

    def __init__(
        self,
        node_id: str,
        outbox: Outbox,
        labels: dict[str, str] | None = None,
        dimse_timeout: float = 30.0,
        patient_id_policy: capture.PatientIdPolicy = "hash",
        patient_id_key: bytes = b"",
    ) -> None:
        self.source = f"dimsebus://node/{node_id}"
        self.patient_id_policy: capture.PatientIdPolicy = patient_id_policy
        self.patient_id_key = patient_id_key
        self.node_id = node_id
        self.labels = labels or {}
        self.dimse_timeout = dimse_timeout
        self._outbox = outbox
        self._states: weakref.WeakKeyDictionary[Association, AssociationState] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._moves: dict[Any, SubAssociations] = {}
        self._waits_spool: weakref.WeakSet[Association] = weakref.WeakSet()  # on_conn_open

    def handlers(self, job: Job | None = None) -> list[tuple[Any, ...]]:
        """The pynetdicom handlers to bind on an association; ``job`` for the ones we open."""
        bound = connection_handlers()
        for event, handler in (
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_ACSE_SENT, self.on_acse),
            (evt.EVT_ACSE_RECV, self.on_acse),
            (evt.EVT_DIMSE_SENT, self.on_dimse_sent),
            (evt.EVT_DIMSE_RECV, self.on_dimse_recv),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ):
            bound.append((event, handler, [job]))
        return bound

    @classmethod
    def for_node(cls, settings: NodeSettings, outbox: Outbox) -> Capture:
        """The capture of a node or send job configured by ``settings``."""
        return cls(
            settings.node_id,
            outbox,
            dict(settings.labels),
            settings.dimse_timeout,
            settings.patient_id_policy,
            settings.patient_key() if settings.patient_id_policy == "hash" else b"",
        )

    def subjects(
        self, instances: Iterable[tuple[str, str | None, str | None]]
    ) -> dict[str, Subject]:
        """Study and protected Patient ID by SOP Instance UID, for a job's events.

        Computed when the job is set up, not per C-STORE on the DIMSE thread.
        """
        return {
            uid: Subject(
                study,
                capture.protect_patient_id(patient, self.patient_id_policy, self.patient_id_key),
            )
            for uid, study, patient in instances
        }

    # -- state --------------------------------------------------------------------------

    def state(self, assoc: Association, job: Job | None = None) -> AssociationState:
        """The state of ``assoc``, created on first use."""
        with self._lock:
            found = self._states.get(assoc)
            if found is None:
                found = self._states[assoc] = AssociationState(reference(assoc)[0], job)
            return found

    def stamp(self) -> Stamp:
        """A fresh id and the current time for one event."""
        return Stamp(new_id(), utc_now(), self.source)

    def emit(self, *events: CloudEvent) -> None:
        """Spool events durably; the relay publishes them."""
        self._outbox.append(events)

    # -- handlers -----------------------------------------------------------------------

    @_guarded
    def on_established(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.established`` with the negotiated contexts."""
        state = self.state(event.assoc, job)
        self._final_reference(event.assoc, state)  # AE titles are final only now
        contexts = tuple(
            ev.PresentationContext(
                id=int(cx.context_id or 1),
                abstract_syntax_uid=str(cx.abstract_syntax),
                transfer_syntax_uid=cx.transfer_syntax[0] if cx.transfer_syntax else None,
                accepted=True,
            )
            for cx in event.assoc.accepted_contexts
        )
        details = {
            "presentation_contexts": contexts,
            "max_pdu_length": event.assoc.acceptor.maximum_length,
        }
        self.emit(capture.association_event("established", state.ref, self.stamp(), **details))

    @_guarded
    def on_acse(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.rejected`` for an A-ASSOCIATE-RJ either way (PS3.8 9.3.4)."""
        primitive = event.primitive  # type: ignore[attr-defined]
        if not isinstance(primitive, A_ASSOCIATE) or primitive.result not in (1, 2):
            return
        if getattr(event.assoc, "dimsebus_unreported", False):  # over the gate's event budget
            return
        state = self.state(event.assoc, job)
        self._final_reference(event.assoc, state)
        if job is not None and job.operation.kind == "move":
            self._sub_associations(job.operation.id).rejection = (
                "rejected_permanent" if primitive.result == 1 else "rejected_transient"
            )
        details = {
            "result": "permanent" if primitive.result == 1 else "transient",
            "source": _REJECT_SOURCES.get(primitive.result_source or 1, "service_user"),
            "reason": primitive.diagnostic or 0,
            "reason_text": str(primitive.reason_str),
        }
        self.emit(capture.association_event("rejected", state.ref, self.stamp(), **details))

    @_guarded
    def on_dimse_sent(self, event: evt.Event, job: Job | None) -> None:
        """Note each C-STORE-RQ; turn a final C-MOVE/C-GET-RSP into its completed event.

        A C-STORE-RQ is recorded (joined to its job, its record prepared) once the
        thread that sent it waits for its response (``on_conn_open``), when nothing
        else needs that thread.
        """
        message, state = event.message, self.state(event.assoc, job)
        name = type(message).__name__
        if name == "C_STORE_RQ":
            state.sent.append((event, utc_now()))
            if event.assoc not in self._waits_spool:
                self._catch_up(state)
        elif name in ("C_MOVE_RSP", "C_GET_RSP") and message.command_set.Status not in _PENDING:
            self._retrieval_completed(event.assoc, state, message)

    @_guarded
    def on_conn_open(self, event: evt.Event, job: Job | None) -> None:
        """Do the capture's work on the thread that waits for a C-STORE-RSP, while it waits.

        pynetdicom reads a response on the association's DUL thread, which also sends
        the next request's PDUs: whatever it does there delays every C-STORE. And the
        thread that sends the requests is busy until it waits for the response in
        ``dimse.get_msg`` (``pynetdicom_internals.wrap_get_msg``). So the handlers only
        note what was sent and what arrived, and that thread records a request once it
        starts waiting for the response, and spools the response's event on waking,
        before ``get_msg`` returns the response: before the node acts on it or sends
        anything more. A response that nobody waits for (one after the DIMSE timeout)
        is spooled by the DUL thread.
        """
        assoc = event.assoc

        def spooling(take: Callable[..., Any]) -> Callable[..., Any]:
            def get_msg(block: bool = False) -> Any:
                state = self._states.get(assoc)
                if state is None:
                    return take(block)
                if block:
                    state.awaited = True
                    if state.sent:
                        self._catch_up(state)
                try:
                    return take(block)
                finally:
                    if block:
                        state.awaited = False
                    if state.arrived or state.sent:
                        self._catch_up(state)

            return get_msg

        pynetdicom_internals.wrap_get_msg(assoc, spooling)
        self._waits_spool.add(assoc)

    @_guarded
    def on_dimse_recv(self, event: evt.Event, job: Job | None) -> None:
        """Note a C-STORE-RSP's arrival; its event is spooled before anyone takes it."""
        if type(event.message).__name__ != "C_STORE_RSP":
            return
        state = self.state(event.assoc, job)
        state.arrived.append((event, utc_now()))
        if not state.awaited:
            self._catch_up(state)

    def _catch_up(
        self, state: AssociationState, ended: tuple[str | None, str, str | None] | None = None
    ) -> list[SentStore]:
        """Record the C-STORE-RQs sent, then spool the responses that arrived, in order.

        If the association ``ended`` (source, detail, reason), it is marked so and the
        requests still unanswered are returned: they are missing.
        """
        hostile: Association | None = None
        unanswered: dict[int, Outstanding] = {}
        with state.lock:
            while state.sent:
                event, requested_at = state.sent.popleft()
                try:
                    self._record_sent(event.assoc, state, event.message, requested_at)
                except Exception as exc:
                    self.on_failure("on_dimse_sent", event, exc)
            while state.arrived:
                event, arrived_at = state.arrived.popleft()
                try:
                    if self._answer(state, event.message, arrived_at):
                        hostile = event.assoc
                except Exception as exc:
                    self.on_failure("on_dimse_recv", event, exc)
            if ended is not None:
                state.ended = state.ended or ended
                unanswered, state.pending = state.pending, {}
        if hostile is not None:  # outside the lock: the abort's own handlers take it
            log.warning(
                "aborting association %s: %d C-STORE-RSPs answered nothing",
                state.ref.id,
                state.unsolicited.count,
            )
            hostile.abort(block=False)  # maybe on the DUL thread, which must not wait on itself
        return [each.sent for each in unanswered.values()]

    def _record_sent(
        self, assoc: Association, state: AssociationState, message: Any, at: dt.datetime
    ) -> None:
        """Keep a C-STORE-RQ, its record prepared, until its response (or its end) comes."""
        sent = self._sent_store(assoc, state, message, at)
        if state.ended is not None:  # the association ended first: no response can come
            self._report_missing([sent], *state.ended)
        else:
            state.pending[sent.message_id] = state.recorder.prepare(sent, new_id(), self.source)

    def _answer(self, state: AssociationState, message: Any, arrived_at: dt.datetime) -> bool:
        """Join a C-STORE-RSP to its request and spool its one event, whatever it holds.

        A plain response to a known request is spooled as the pair's record (its
        event is made by the relay); any other gets its event built here. A response
        to no outstanding request is only counted (``services.node.unsolicited``):
        True when it used up the association's budget, which is then to be aborted.
        """
        values = read_values(message.command_set, _RESPONSE_TAGS)
        plain = storepair.plain_response(values) if values is not None else None
        response = plain or StoreResponse.of(command_values(message.command_set))
        key = salvage.message_id_or_none(response.message_id)
        outstanding = state.pending.pop(key, None) if key is not None else None
        if outstanding is None:
            return self._unsolicited(state, response)
        if plain is not None:
            self._outbox.append_record(outstanding.record(plain, arrived_at))
            assert isinstance(plain.status, int)
            CSTORE.note(plain.status, (arrived_at - outstanding.sent.requested_at).total_seconds())
            return False
        sent = outstanding.sent
        stamp = Stamp(new_id(), arrived_at, self.source)
        answer = capture.answer_event(sent, response, state.ref.id, stamp)
        self.emit(answer)
        CSTORE.note(_category(answer), (arrived_at - sent.requested_at).total_seconds())
        return False

    @staticmethod
    def _unsolicited(state: AssociationState, response: StoreResponse) -> bool:
        """Count a response that answers nothing; True if it used up the budget just now."""
        if state.unsolicited.count == 0:
            log.warning(
                "C-STORE-RSP for unknown message id %r on %s", response.message_id, state.ref.id
            )
        state.unsolicited = state.unsolicited.noted(response)
        CSTORE.note("invalid", None)
        return state.unsolicited.just_exhausted

    def _report_unsolicited(self, state: AssociationState) -> None:
        """The association ended: its unsolicited responses, if any, become one event."""
        with state.lock:
            if state.unsolicited_reported:
                return
            state.unsolicited_reported = True
            event = unsolicited_event(state.unsolicited, state.ref.id, self.stamp())
        if event is not None:
            self.emit(event)

    @_guarded
    def on_released(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.released``; any request still unanswered is missing."""
        state = self.state(event.assoc, job)
        self._missing(state, None, "association released before the response", "released")
        self.emit(capture.association_event("released", state.ref, self.stamp()))

    @_guarded
    def on_aborted(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.aborted``; requests still unanswered are missing."""
        state = self.state(event.assoc, job)
        source = abort_source(event.assoc) or "peer"
        reason = ABORT_TEXT[source]
        self._missing(state, source, reason)
        self.emit(
            capture.association_event(
                "aborted", state.ref, self.stamp(), source=source, reason=reason
            )
        )

    @_guarded
    def on_conn_close(self, event: evt.Event, job: Job | None) -> None:
        """A connection that closed under unanswered requests lost them.

        The close may be seen before the association thread reports an A-ABORT
        that arrived just before it, so the DUL is asked whether one did.
        """
        source = abort_source(event.assoc)
        detail = ABORT_TEXT[source] if source else "TCP connection closed"
        state = self.state(event.assoc, job)
        self._missing(state, source, detail)
        self._report_unsolicited(state)

    def on_failure(self, handler: str, event: evt.Event, exc: Exception) -> None:
        """Record what a handler could not turn into its event, and log it."""
        message = getattr(event, "message", None)
        name = _message_name(event, message)
        log.exception("%s failed on %s; recording dicom.message.invalid", handler, name)
        try:
            command = command_values(getattr(message, "command_set", None))
            self.emit(
                salvage.invalid_event(
                    name,
                    f"{handler} raised {type(exc).__name__}: {exc}",
                    self.stamp(),
                    association_id=getattr(getattr(event, "assoc", None), "dimsebus_id", None),
                    message_id=command.get("MessageIDBeingRespondedTo", command.get("MessageID")),
                    sop_instance_uid=command.get("AffectedSOPInstanceUID"),
                    fields=command,
                )
            )
        except Exception:
            log.exception("could not record the failure of %s either: the event is lost", handler)

    # -- helpers of the handlers ----------------------------------------------------------

    def _final_reference(self, assoc: Association, state: AssociationState) -> None:
        """Bind the negotiated AE titles; say once if the contract made us substitute one."""
        state.ref, problems, raw = reference(assoc)
        if problems and not state.substitutes_reported:
            state.substitutes_reported = True
            log.warning("association %s: %s", state.ref.id, problems)
            self.emit(salvage.substitution_event(state.ref, problems, raw, self.stamp()))

    def _sent_store(
        self, assoc: Association, state: AssociationState, message: Any, at: dt.datetime
    ) -> SentStore:
        values = read_values(message.command_set, _REQUEST_FIELDS)
        if values is None:
            raise ValueError("the C-STORE-RQ's command set does not decode")
        job = state.job or Job(ev.Operation(kind="store", id=state.ref.id))
        uid = str(values["AffectedSOPInstanceUID"])
        if job.operation.kind == "move":
            self._sub_associations(job.operation.id).sent.add(uid)
        originator = job.move_originator
        ae_title = values["MoveOriginatorApplicationEntityTitle"]
        if ae_title:  # as sent on the wire; the job's own when it is the same
            ae_title, message_id = (
                str(ae_title).strip(),
                cast(int, values["MoveOriginatorMessageID"]),
            )
            if originator is None or (originator.ae_title, originator.message_id) != (
                ae_title,
                message_id,
            ):
                originator = ev.MoveOriginator(ae_title=ae_title, message_id=message_id)
        subject = job.subjects.get(uid)
        return SentStore(
            association=state.ref,
            presentation_context_id=message.context_id,
            transfer_syntax_uid=self._transfer_syntax(assoc, state, message.context_id),
            message_id=cast(int, values["MessageID"]),
            affected_sop_class_uid=str(values["AffectedSOPClassUID"]),
            affected_sop_instance_uid=uid,
            move_originator=originator,
            operation=job.operation,
            attempt=job.attempts.get(uid, 1),
            labels={**self.labels, **job.labels},
            requested_at=at,
            study_instance_uid=subject.study_instance_uid if subject else None,
            patient_id=subject.patient_id if subject else None,
        )

    @staticmethod
    def _transfer_syntax(assoc: Association, state: AssociationState, context_id: int) -> str:
        found = state.transfer_syntaxes.get(context_id)
        if found is None:
            found = state.transfer_syntaxes[context_id] = str(transfer_syntax(assoc, context_id))
        return found

    def _missing(
        self, state: AssociationState, source: str | None, detail: str, reason: str | None = None
    ) -> None:
        """The association ended: what it still waited for is missing, now and later.

        Requests sent and responses that came before the end are caught up on first.
        """
        unanswered = self._catch_up(state, ended=(source, detail, reason))
        self._report_missing(unanswered, source, detail, reason)

    def _report_missing(
        self, requests: list[SentStore], source: str | None, detail: str, reason: str | None
    ) -> None:
        if not requests:
            return
        now = utc_now()
        for _ in requests:
            CSTORE.note("missing", None)
        self.emit(
            *(
                capture.missing_event(
                    sent,
                    reason
                    or capture.missing_reason(
                        source, (now - sent.requested_at).total_seconds(), self.dimse_timeout
                    ),
                    detail,
                    self.stamp(),
                )
                for sent in requests
            )
        )

    def _retrieval_completed(
        self, assoc: Association, state: AssociationState, message: Any
    ) -> None:
        command = message.command_set
        retrieval = state.retrievals.pop(command.MessageIDBeingRespondedTo, None)
        if retrieval is None:
            return
        counts = ev.SubOperationCounts(
            remaining=command.get("NumberOfRemainingSuboperations"),
            completed=command.get("NumberOfCompletedSuboperations") or 0,
            failed=command.get("NumberOfFailedSuboperations") or 0,
            warning=command.get("NumberOfWarningSuboperations") or 0,
        )
        # An archive filled before UIDs were validated may list invalid ones: they are
        # named once in their own event, and the completed event goes out without them.
        failed, invalid = salvage.split_uids(failed_uids(assoc, message))
        data = {
            **retrieval.data,
            "counts": counts,
            "error_comment": command.get("ErrorComment"),
            "failed_sop_instance_uids": failed[:MAX_UIDS],  # the contract's cap per event
            "failed_sop_instance_uids_omitted": max(len(failed) - MAX_UIDS, 0),
        }
        # Never-sent instances go first, in the same outbox write: whoever sees the
        # move completed has seen why its never-sent sub-operations failed.
        unsent = (
            self._unsent_by_move(retrieval, failed, command.Status)
            if retrieval.model is ev.MoveCompleted
            else []
        )
        left_out = (
            [self._left_out(retrieval, message, "FailedSOPInstanceUIDList", invalid)]
            if invalid
            else []
        )
        self.emit(
            *unsent,
            *left_out,
            capture.retrieve_completed_event(retrieval.model, data, command.Status, self.stamp()),
        )

    def _left_out(
        self, retrieval: Retrieval, message: Any, element: str, invalid: tuple[str, ...]
    ) -> CloudEvent:
        """``dicom.message.invalid`` naming the ``invalid`` UIDs of a final response, once."""
        name = type(message).__name__.replace("_", "-")
        log.warning("%d invalid UIDs in %s left out of its event", len(invalid), name)
        data = retrieval.data
        return salvage.left_out_event(
            name,
            element,
            invalid,
            self.stamp(),
            association_id=data["association"].id,
            message_id=data["message_id"],
            operation=data["operation"],
        )

    def _sub_associations(self, operation_id: Any) -> SubAssociations:
        with self._lock:
            return self._moves.setdefault(operation_id, SubAssociations())

    def _unsent_by_move(
        self, retrieval: Retrieval, failed: tuple[str, ...], status: int
    ) -> list[CloudEvent]:
        """``dicom.cstore.unsent`` for a move's instances that never got a C-STORE-RQ."""
        operation: ev.Operation = retrieval.data["operation"]
        with self._lock:
            subs = self._moves.pop(operation.id, SubAssociations())
        # pynetdicom answers an unreachable destination with 0xA801 and no UID list.
        candidates = failed or (retrieval.uids if status == 0xA801 and not subs.sent else ())
        unsent = [uid for uid in salvage.split_uids(candidates)[0] if uid not in subs.sent]
        if not unsent or retrieval.originator is None:
            return []
        destination = retrieval.data["move_destination"]
        reason, detail = capture.unsent_reason(
            retrieval.destination_known, subs.rejection, bool(subs.sent), destination
        )
        return [
            capture.unsent_event(
                operation,
                destination,
                list(chunk),
                1,
                retrieval.originator,
                {**self.labels},
                reason,
                detail,
                self.stamp(),
            )
            for chunk in chunked(unsent)
        ]


def _message_name(event: evt.Event, message: object) -> str:
    """``C-STORE-RSP`` for a DIMSE message, else the pynetdicom event's name."""
    if message is not None:
        return type(message).__name__.replace("_", "-")
    return str(getattr(getattr(event, "event", None), "name", "unknown"))


def _category(event: CloudEvent) -> str:
    """The metrics label of a C-STORE-RSP's event: its category, missing or invalid."""
    if isinstance(event, ev.MessageInvalid):
        return "invalid"
    return str(getattr(event.data, "status_category", "missing"))
