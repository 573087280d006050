"""Each C-STORE-RQ the node sends, recorded, and the one event of its C-STORE-RSP, spooled.

A request is recorded (joined to its job, its pair record laid out) and kept
by message id until its response comes, or its association ends (then it is
missing). A plain response to it is spooled as its pair's record
(``dimsebus.services.node.storepair``), any other as an ``Answered`` fact, its values
made text first (``capture.answer_facts``); the relay makes their events
(``dimsebus.services.node.facts``). A response to no outstanding request is only counted
(``dimsebus.services.node.unsolicited``), and the association aborted if there are too
many. Which thread does this work is ``dimsebus.services.node.handoff``'s concern.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, cast

from pynetdicom.association import Association

from dimsebus.schemas import events as ev
from dimsebus.schemas.status import Service, describe_status
from dimsebus.services.bus.outbox import Outbox
from dimsebus.services.clock import new_id, utc_now
from dimsebus.services.metrics import CSTORE
from dimsebus.services.node import capture, facts, salvage, storepair
from dimsebus.services.node.association import command_values, read_values, tags_of, transfer_syntax
from dimsebus.services.node.capture import AnswerFacts, SentStore, Stamp, StoreResponse
from dimsebus.services.node.fact_records import record_of, records_of
from dimsebus.services.node.jobs import AssociationState, Job
from dimsebus.services.node.storepair import Outstanding
from dimsebus.services.node.suboperations import SubOperations
from dimsebus.services.node.unsolicited import unsolicited_facts

log = logging.getLogger(__name__)

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

Ended = tuple[str | None, str, str | None]
"""Why an association ended: the abort's source (or None), the detail, the reason if known."""


class Pairing:
    """Records the C-STORE-RQs of a node's associations and spools their responses' events."""

    def __init__(
        self,
        source: str,
        labels: dict[str, str],
        dimse_timeout: float,
        outbox: Outbox,
        sub_operations: SubOperations,
        on_failure: Callable[[str, Any, Exception], None],
    ) -> None:
        self.source = source
        self.labels = labels
        self.dimse_timeout = dimse_timeout
        self._outbox = outbox
        self._sub_operations = sub_operations
        self._on_failure = on_failure

    def stamp(self) -> Stamp:
        """A fresh id and the current time for one event."""
        return Stamp(new_id(), utc_now(), self.source)

    def catch_up(self, state: AssociationState, ended: Ended | None = None) -> list[SentStore]:
        """Record the C-STORE-RQs sent, then spool the responses that arrived, in order.

        If the association ``ended``, it is marked so and the requests still
        unanswered are returned: they are missing.
        """
        hostile: Association | None = None
        unanswered: dict[int, Outstanding] = {}
        with state.lock:
            while state.sent:
                event, requested_at = state.sent.popleft()
                try:
                    self._record_sent(event.assoc, state, event.message, requested_at)
                except Exception as exc:
                    self._on_failure("on_dimse_sent", event, exc)
            while state.arrived:
                event, arrived_at = state.arrived.popleft()
                try:
                    if self._answer(state, event.message, arrived_at):
                        hostile = event.assoc
                except Exception as exc:
                    self._on_failure("on_dimse_recv", event, exc)
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

    def missing(self, state: AssociationState, ended: Ended) -> None:
        """The association ended: what it still waited for is missing, now and later.

        Requests sent and responses that came before the end are caught up on first.
        """
        self.report_missing(self.catch_up(state, ended), *ended)

    def report_missing(
        self, requests: list[SentStore], source: str | None, detail: str, reason: str | None
    ) -> None:
        """Spool ``dicom.cstore.response.missing`` for each of ``requests``."""
        if not requests:
            return
        now = utc_now()
        for _ in requests:
            CSTORE.note("missing", None)
        missing = [
            facts.Missing(
                self.stamp(),
                sent,
                reason
                or capture.missing_reason(
                    source, (now - sent.requested_at).total_seconds(), self.dimse_timeout
                ),
                detail,
            )
            for sent in requests
        ]
        self._outbox.append_records(records_of(missing))

    def report_unsolicited(self, state: AssociationState) -> None:
        """The association ended: its unsolicited responses, if any, become one event."""
        with state.lock:
            if state.unsolicited_reported:
                return
            state.unsolicited_reported = True
            invalid = unsolicited_facts(state.unsolicited, state.ref.id)
        if invalid is not None:
            self._outbox.append_record(record_of(facts.Invalid(self.stamp(), invalid)))

    def _record_sent(
        self, assoc: Association, state: AssociationState, message: Any, at: dt.datetime
    ) -> None:
        """Keep a C-STORE-RQ, its record prepared, until its response (or its end) comes."""
        sent = self._sent_store(assoc, state, message, at)
        if state.ended is not None:  # the association ended first: no response can come
            self.report_missing([sent], *state.ended)
        else:
            state.pending[sent.message_id] = state.recorder.prepare(sent, new_id(), self.source)

    def _answer(self, state: AssociationState, message: Any, arrived_at: dt.datetime) -> bool:
        """Join a C-STORE-RSP to its request and spool its one event, whatever it holds.

        True when it answered nothing and used up the association's budget for
        such responses: the association is then to be aborted.
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
        answer = capture.answer_facts(response)
        self._outbox.append_record(record_of(facts.Answered(stamp, sent, answer)))
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

    def _sent_store(
        self, assoc: Association, state: AssociationState, message: Any, at: dt.datetime
    ) -> SentStore:
        values = read_values(message.command_set, _REQUEST_FIELDS)
        if values is None:
            raise ValueError("the C-STORE-RQ's command set does not decode")
        job = state.job or Job(ev.Operation(kind="store", id=state.ref.id))
        uid = str(values["AffectedSOPInstanceUID"])
        if job.operation.kind == "move":
            self._sub_operations.of(job.operation.id).sent.add(uid)
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
            transfer_syntax_uid=_transfer_syntax(assoc, state, message.context_id),
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


def _transfer_syntax(assoc: Association, state: AssociationState, context_id: int) -> str:
    found = state.transfer_syntaxes.get(context_id)
    if found is None:
        found = state.transfer_syntaxes[context_id] = str(transfer_syntax(assoc, context_id))
    return found


def _category(answer: AnswerFacts) -> str:
    """The metrics label of a C-STORE-RSP that is not plain: its category, or missing.

    Its event may yet be ``dicom.message.invalid`` (request facts the contract
    rejects); the relay finds that out, so the label counts it by its response.
    """
    if answer.status is None:
        return "missing"
    return describe_status(answer.status, Service.STORAGE).category.value
