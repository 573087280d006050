"""What the node reads off, and sets on, a pynetdicom association.

Its handle (id, AE titles, peer), who aborted it, the transfer syntax of a
presentation context, a command set's values read safely, and the socket and
handler settings every association of the node gets at EVT_CONN_OPEN.
"""

from __future__ import annotations

import socket
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dsutils import decode

from schemas import events as ev
from services.clock import new_id
from services.node import salvage

ABORT_TEXT = {
    "local": "A-ABORT sent by the node",
    "peer": "A-ABORT from the peer",
    "network": "A-P-ABORT",
}


def abort_source(assoc: Association) -> str | None:
    """Who aborted ``assoc``: local, peer, network (A-P-ABORT), or None if nobody did."""
    if assoc._sent_abort:
        return "local"
    if assoc.acse.is_aborted("a-p-abort"):
        return "network"
    return "peer" if assoc.acse.is_aborted() else None


def quiet_dimse_logging(event: evt.Event) -> None:
    """Unbind pynetdicom's standard DIMSE logging handlers from the association.

    They run before ours, and an exception in one stops the rest: a C-STORE-RSP
    without Status makes pynetdicom's own logger raise, and the capture would
    never see the response. They also log two lines per C-STORE; the capture's
    events say more.
    """
    event.assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
    event.assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)


def set_tcp_nodelay(event: evt.Event) -> None:
    """Disable Nagle on the association's socket: each C-STORE would wait 40 ms for an ACK."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reference(
    assoc: Association,
) -> tuple[ev.AssociationRef, dict[str, str], dict[str, object]]:
    """The association's handle, AE titles it had to substitute, and the raw titles."""
    local, peer = (
        (assoc.requestor, assoc.acceptor)
        if assoc.is_requestor
        else (assoc.acceptor, assoc.requestor)
    )
    raw: dict[str, object] = {"local_ae_title": local.ae_title, "peer_ae_title": peer.ae_title}
    ref, problems = salvage.association_ref(
        association_id(assoc),
        "requestor" if assoc.is_requestor else "acceptor",
        (local.ae_title, peer.ae_title),
        peer.address,
        peer.port,
    )
    return ref, problems, raw


def command_values(command: Dataset | None) -> dict[str, object]:
    """A command set as keyword to value; an element that does not decode is ``Unreadable``.

    pydicom decodes each element on first access, so a Status of odd length
    raises only when it is read: here, not in the middle of building an event.
    """
    values: dict[str, object] = {}
    if command is None:
        return values
    for tag in list(command.keys()):
        name = keyword_for_tag(tag) or str(tag)
        try:
            values[name] = command[tag].value
        except Exception as exc:
            values[name] = salvage.Unreadable(f"{type(exc).__name__}: {exc}")
    return values


def association_id(assoc: Association) -> Any:
    """The node's id for ``assoc``: one per association, kept on the object itself."""
    if not hasattr(assoc, "dimsebus_id"):
        assoc.dimsebus_id = new_id()  # type: ignore[attr-defined]
    return assoc.dimsebus_id  # type: ignore[attr-defined]


def transfer_syntax(assoc: Association, context_id: int) -> UID:
    """The transfer syntax accepted for presentation context ``context_id``."""
    context = next(cx for cx in assoc.accepted_contexts if cx.context_id == context_id)
    return context.transfer_syntax[0]


def failed_uids(assoc: Association, message: Any) -> tuple[str, ...]:
    if message.data_set is None or not message.data_set.getvalue():
        return ()
    syntax = transfer_syntax(assoc, message.context_id)
    message.data_set.seek(0)
    identifier = decode(
        message.data_set, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
    )
    message.data_set.seek(0)
    uids = identifier.get("FailedSOPInstanceUIDList") or []
    return tuple(str(uid) for uid in ([uids] if isinstance(uids, str) else uids) if uid)
