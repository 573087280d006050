"""The node's access control, applied to pynetdicom's associations (``node.access``).

Two hooks. EVT_REQUESTED, which pynetdicom triggers on the acceptor after the
A-ASSOCIATE-RQ arrived and before it negotiates: an association the peer may not
have is rejected there with an A-ASSOCIATE-RJ (pynetdicom's documented place to
reject). And each request on an accepted association: pynetdicom hands it to
``Association._serve_request``, which this wraps at EVT_CONN_OPEN (through
``dimsebus.services.node.pynetdicom_internals``, like every reach into pynetdicom) so that a
request the peer may not make is answered 0x0124 before any handler, identifier
decode or sub-association happens (a C-MOVE or C-GET handler cannot answer a
status before it names a destination or a count). Every refusal is a
``dicom.access.refused`` event, within a budget per address.
"""

from __future__ import annotations

import logging
import socket
import time
import weakref
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE

from dimsebus.services.node import access
from dimsebus.services.node import pynetdicom_internals as internals
from dimsebus.services.node.capture_shell import Capture
from dimsebus.services.node.config import NodeSettings, Service
from dimsebus.services.node.facts import Refused

log = logging.getLogger(__name__)

_SERVICES: dict[type, Service] = {
    C_ECHO: "echo",
    C_STORE: "store",
    C_FIND: "find",
    C_MOVE: "move",
    C_GET: "get",
}


class Gate:
    """Rejects associations and refuses requests that the node's configuration does not allow."""

    def __init__(self, settings: NodeSettings, capture: Capture) -> None:
        self.settings = settings
        self.capture = capture
        self.addresses = {ae: resolve(p.host) for ae, p in settings.peers.items() if p.host}
        self.budget = access.EventBudget()
        self._grants: weakref.WeakKeyDictionary[Association, access.Grant] = (
            weakref.WeakKeyDictionary()
        )
        self._refused: weakref.WeakKeyDictionary[Association, int] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[tuple[Any, ...]]:
        """The handlers to bind on the node's server (accepted associations only)."""
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_CONN_OPEN, self.on_conn_open)]

    def on_requested(self, event: evt.Event) -> None:
        """Admit the A-ASSOCIATE-RQ with what the peer may do, or reject it (PS3.8 9.3.4)."""
        assoc = event.assoc
        request: Any = assoc.requestor.primitive
        calling, called = str(request.calling_ae_title), str(request.called_ae_title)
        proposed = access.services_of(
            str(cx.abstract_syntax) for cx in request.presentation_context_definition_list
        )
        verdict = access.admit(
            self.settings.access,
            self.settings.peers,
            self.settings.ae_title,
            calling,
            called,
            str(assoc.requestor.address),
            self.addresses,
            proposed,
        )
        if isinstance(verdict, access.Grant):
            self._grants[assoc] = verdict
            return
        assoc.requestor.ae_title = calling  # as negotiation would: the events name the peer
        log.warning(
            "rejected association from %s at %s: %s",
            calling.strip(),
            assoc.requestor.address,
            verdict.detail,
        )
        reported = self._report(
            assoc, "association", verdict.reason, verdict.detail, called_ae_title=called[:64]
        )
        assoc.dimsebus_unreported = not reported  # type: ignore[attr-defined]
        internals.reject_association(assoc, verdict.result, verdict.source, verdict.diagnostic)

    def on_conn_open(self, event: evt.Event) -> None:
        """Refuse, before pynetdicom serves it, each request the peer may not make."""
        assoc: Any = event.assoc

        def guard(serve: Any) -> Any:
            def serve_request(message: Any, context_id: int) -> None:
                service = _SERVICES.get(type(message))
                grant = self._grants.get(assoc)
                if service is None or grant is None or access.may(grant, service):
                    serve(message, context_id)
                elif message.is_valid_request and (
                    internals.accepted_context(assoc, context_id) is not None
                ):
                    self._refuse(assoc, grant, service, message, context_id)
                else:
                    serve(message, context_id)  # pynetdicom ignores or aborts it, as before

            return serve_request

        internals.wrap_serve_request(assoc, guard)
        self._bound_refused_data(assoc)

    def _bound_refused_data(self, assoc: Any) -> None:
        """Abort a peer that streams a data set for a service it may not use.

        pynetdicom assembles a whole DIMSE message in memory before anyone sees it, so
        an unknown peer that may echo could otherwise send a 2 GB C-STORE to be refused
        only once it arrived. Its command (and a little data) still gets its 0x0124.
        """
        seen = [0]

        def bound(receive: Any) -> Any:
            def receive_primitive(primitive: Any) -> None:
                grant = self._grants.get(assoc)
                if grant is not None:
                    for context_id, data in primitive.presentation_data_value_list:
                        if data[0] & 0x01:  # a command fragment starts a message (PS3.8 E.2)
                            seen[0] = 0
                            continue
                        context = internals.accepted_context(assoc, context_id)
                        service = (
                            access.service_of(str(context.abstract_syntax)) if context else None
                        )
                        if service is not None and not access.may(grant, service):
                            seen[0] += len(data) - 1
                    if seen[0] > access.REFUSED_DATA_LIMIT:
                        log.warning(
                            "aborting the association of %s: a data set for a service it may "
                            "not use",
                            assoc.requestor.ae_title,
                        )
                        internals.abort_as_invalid(assoc)  # as pynetdicom does on a bad message
                        return
                receive(primitive)

            return receive_primitive

        internals.wrap_receive_primitive(assoc, bound)

    def _refuse(
        self,
        assoc: Association,
        grant: access.Grant,
        service: Service,
        request: Any,
        context_id: int,
    ) -> None:
        """Answer 0x0124 Refused: Not Authorized (PS3.7 C.5.2); abort a peer that keeps asking."""
        calling = str(assoc.requestor.ae_title)
        comment = access.refusal_comment(service, calling)
        response = type(request)()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        if isinstance(request, C_STORE):
            response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        response.Status = access.NOT_AUTHORIZED
        if not isinstance(request, C_ECHO):  # C-ECHO-RSP has no Error Comment (PS3.7 9.3.5)
            response.ErrorComment = comment
        internals.send_response(assoc, response, context_id)
        count = self._refused[assoc] = self._refused.get(assoc, 0) + 1
        log.warning("refused %s to %s at %s", service.upper(), calling, assoc.requestor.address)
        self._report(
            assoc,
            service,
            "host_not_allowed" if grant.note else "service_not_allowed",
            grant.note or comment,
            message_id=request.MessageID,
            affected_sop_class_uid=str(request.AffectedSOPClassUID),
            status=access.NOT_AUTHORIZED,
            refused=count,
        )
        if count >= access.REFUSALS_BEFORE_ABORT:
            log.warning("aborting the association of %s: %d requests refused", calling, count)
            assoc.abort()

    def _report(
        self, assoc: Association, service: str, reason: str, detail: str, **more: Any
    ) -> bool:
        """Spool the refusal's event, unless over the budget of its address; whether it was."""
        address = access.canonical_address(str(assoc.requestor.address))
        held = self.budget.take(address, time.monotonic())
        if held is None:
            return False
        try:
            ref = self.capture.state(assoc).ref
            details = {
                "service": service,
                "reason": reason,
                "detail": detail,
                "suppressed": held,
                **more,
            }
            self.capture.spool(Refused(self.capture.stamp(), ref, details))
        except Exception:
            log.exception("could not record the refusal of %s", service)
        return True


def resolve(host: str) -> frozenset[str]:
    """The addresses ``host`` resolves to; none (so nobody matches) if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning("peer host %r does not resolve (%s): it can connect from nowhere", host, exc)
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)
