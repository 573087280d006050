"""The thin pynetdicom shell of the capture: the handlers it binds, and what they spool.

pynetdicom calls these handlers on its association threads. They only read
the message, keep per-association state and spool what happened as facts
(``dimsebus.services.node.facts``): no broker, no awaiting, and no event built
here; the relay makes each fact's event. The work is split by job: ``pairing``
records each C-STORE-RQ and spools its response's fact, ``handoff`` has the
thread that waits for a response do that work, ``suboperations`` keeps what a
C-MOVE's sub-associations did.

pynetdicom logs an exception from a handler and carries on, so the event would
be lost: every handler is ``_guarded``, and whatever it raises is recorded as
``dicom.message.invalid`` (``dimsebus.services.node.salvage``) and logged instead.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from dimsebus.schemas.envelope import CloudEvent
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.clock import utc_now
from dimsebus.services.node import capture, facts, handoff, salvage
from dimsebus.services.node.association import (
    ABORT_TEXT,
    abort_source,
    command_values,
    connection_handlers,
    reference,
)
from dimsebus.services.node.capture import Stamp
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.fact_records import record_of, records_of
from dimsebus.services.node.jobs import AssociationState, Job, Subject
from dimsebus.services.node.pairing import Pairing
from dimsebus.services.node.suboperations import SubOperations, completed_facts

log = logging.getLogger(__name__)

_REJECT_SOURCES = {
    1: "service_user",
    2: "service_provider_acse",
    3: "service_provider_presentation",
}
_PENDING = (0xFF00, 0xFF01)


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
        self._sub_operations = SubOperations()
        self._pairing = Pairing(
            self.source, self.labels, dimse_timeout, outbox, self._sub_operations, self.on_failure
        )
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
        return self._pairing.stamp()

    def emit(self, *events: CloudEvent) -> None:
        """Spool events durably; the relay publishes them (for callers off pynetdicom's threads)."""
        self._outbox.append(events)

    def spool(self, *noted: facts.Fact) -> None:
        """Spool facts durably, in one commit; the relay makes and publishes their events."""
        self._outbox.append_records(records_of(noted))

    def spool_opening(self, requested: facts.Requested, matched: list[str]) -> None:
        """Spool a C-MOVE-RQ's fact, its move opened in the journal in the same commit."""
        self._outbox.append_opening(record_of(requested), matched)

    # -- handlers -----------------------------------------------------------------------

    @_guarded
    def on_established(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.established`` with the negotiated contexts."""
        state = self.state(event.assoc, job)
        self._final_reference(event.assoc, state)  # AE titles are final only now
        contexts = tuple(
            (
                int(cx.context_id or 1),
                str(cx.abstract_syntax),
                str(cx.transfer_syntax[0]) if cx.transfer_syntax else None,
            )
            for cx in event.assoc.accepted_contexts
        )
        maximum = event.assoc.acceptor.maximum_length
        self.spool(facts.Established(self.stamp(), state.ref, contexts, maximum))

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
            self._sub_operations.of(job.operation.id).rejection = (
                "rejected_permanent" if primitive.result == 1 else "rejected_transient"
            )
        rejected = facts.Rejected(
            self.stamp(),
            state.ref,
            result="permanent" if primitive.result == 1 else "transient",
            source=_REJECT_SOURCES.get(primitive.result_source or 1, "service_user"),
            reason=int(primitive.diagnostic or 0),
            reason_text=str(primitive.reason_str),
        )
        self.spool(rejected)

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
                self._pairing.catch_up(state)
        elif name in ("C_MOVE_RSP", "C_GET_RSP") and message.command_set.Status not in _PENDING:
            retrieval = state.retrievals.pop(message.command_set.MessageIDBeingRespondedTo, None)
            if retrieval is not None:
                self.spool(
                    *completed_facts(
                        event.assoc,
                        retrieval,
                        message,
                        self._sub_operations,
                        self.labels,
                        self.stamp,
                    )
                )

    @_guarded
    def on_conn_open(self, event: evt.Event, job: Job | None) -> None:
        """Do the capture's work on the thread that waits for a C-STORE-RSP (``handoff``)."""
        handoff.spool_while_waiting(event.assoc, self._states.get, self._pairing.catch_up)
        self._waits_spool.add(event.assoc)

    @_guarded
    def on_dimse_recv(self, event: evt.Event, job: Job | None) -> None:
        """Note a C-STORE-RSP's arrival; its event is spooled before anyone takes it."""
        if type(event.message).__name__ != "C_STORE_RSP":
            return
        state = self.state(event.assoc, job)
        state.arrived.append((event, utc_now()))
        if not state.awaited:
            self._pairing.catch_up(state)

    @_guarded
    def on_released(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.released``; any request still unanswered is missing."""
        state = self.state(event.assoc, job)
        self._pairing.missing(state, (None, "association released before the response", "released"))
        self.spool(facts.Ended(self.stamp(), state.ref, "released"))

    @_guarded
    def on_aborted(self, event: evt.Event, job: Job | None) -> None:
        """``dicom.association.aborted``; requests still unanswered are missing."""
        state = self.state(event.assoc, job)
        source = abort_source(event.assoc) or "peer"
        reason = ABORT_TEXT[source]
        self._pairing.missing(state, (source, reason, None))
        self.spool(facts.Ended(self.stamp(), state.ref, "aborted", source, reason))

    @_guarded
    def on_conn_close(self, event: evt.Event, job: Job | None) -> None:
        """A connection that closed under unanswered requests lost them.

        The close may be seen before the association thread reports an A-ABORT
        that arrived just before it, so the DUL is asked whether one did.
        """
        source = abort_source(event.assoc)
        detail = ABORT_TEXT[source] if source else "TCP connection closed"
        state = self.state(event.assoc, job)
        self._pairing.missing(state, (source, detail, None))
        self._pairing.report_unsolicited(state)

    def on_failure(self, handler: str, event: evt.Event, exc: Exception) -> None:
        """Record what a handler could not turn into its event, and log it."""
        message = getattr(event, "message", None)
        name = _message_name(event, message)
        log.exception("%s failed on %s; recording dicom.message.invalid", handler, name)
        try:
            command = command_values(getattr(message, "command_set", None))
            invalid = salvage.invalid_facts(
                name,
                f"{handler} raised {type(exc).__name__}: {exc}",
                association_id=getattr(getattr(event, "assoc", None), "dimsebus_id", None),
                message_id=command.get("MessageIDBeingRespondedTo", command.get("MessageID")),
                sop_instance_uid=command.get("AffectedSOPInstanceUID"),
                fields=command,
            )
            self.spool(facts.Invalid(self.stamp(), invalid))
        except Exception:
            log.exception("could not record the failure of %s either: the event is lost", handler)

    def _final_reference(self, assoc: Association, state: AssociationState) -> None:
        """Bind the negotiated AE titles; say once if the contract made us substitute one."""
        state.ref, problems, raw = reference(assoc)
        if problems and not state.substitutes_reported:
            state.substitutes_reported = True
            log.warning("association %s: %s", state.ref.id, problems)
            invalid = salvage.substitution_facts(state.ref, problems, raw)
            self.spool(facts.Invalid(self.stamp(), invalid))


def _message_name(event: evt.Event, message: object) -> str:
    """``C-STORE-RSP`` for a DIMSE message, else the pynetdicom event's name."""
    if message is not None:
        return type(message).__name__.replace("_", "-")
    return str(getattr(getattr(event, "event", None), "name", "unknown"))
