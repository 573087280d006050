"""What the node reads off, and sets on, a pynetdicom association.

Its handle (id, AE titles, peer), who aborted it, the transfer syntax of a
presentation context, a command set's values read safely, and the socket and
handler settings every association of the node gets at EVT_CONN_OPEN. What is
not pynetdicom's public API is read through ``dimsebus.services.node.pynetdicom_internals``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dsutils import decode

from dimsebus.schemas import events as ev
from dimsebus.services.clock import new_id
from dimsebus.services.node import pynetdicom_internals as internals
from dimsebus.services.node import salvage
from dimsebus.services.node.reactor import install_checkpoint, sleep_on_socket_no_more, wake_on_data
from dimsebus.services.node.server import bound_reads_of_requested

ABORT_TEXT = {
    "local": "A-ABORT sent by the node",
    "peer": "A-ABORT from the peer",
    "network": "A-P-ABORT",
}


def abort_source(assoc: Association) -> str | None:
    """Who aborted ``assoc``: local, peer, network (A-P-ABORT), or None if nobody did."""
    if internals.sent_abort(assoc):
        return "local"
    if assoc.acse.is_aborted("a-p-abort"):
        return "network"
    return "peer" if assoc.acse.is_aborted() else None


def connection_handlers() -> list[tuple[Any, ...]]:
    """What every association of the node gets at EVT_CONN_OPEN, with or without a capture.

    TCP_NODELAY, the race-free reactor checkpoint, a DUL thread that wakes when the
    peer sends, and, on the associations the node requests, PDUs read by a deadline and
    within the length it announced (``server.bound_reads_of_requested``; its server does
    that for those it accepts). Asked for before the node makes an association or its
    server, so none of those gets pynetdicom's standard per-message logging handlers
    either (``pynetdicom_internals.quiet_standard_event_logging``).
    """
    internals.quiet_standard_event_logging()
    return [
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),
        (evt.EVT_CONN_OPEN, install_checkpoint),
        (evt.EVT_CONN_OPEN, wake_on_data),
        (evt.EVT_CONN_OPEN, bound_reads_of_requested),
        (evt.EVT_CONN_CLOSE, sleep_on_socket_no_more),
    ]


def set_tcp_nodelay(event: evt.Event) -> None:
    """Disable Nagle on the association's socket: each C-STORE would wait 40 ms for an ACK."""
    sock = internals.transport_socket(event.assoc)
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


def tags_of(keywords: Iterable[str]) -> tuple[tuple[str, int, str], ...]:
    """(keyword, tag, VR) of command elements, for ``read_values``."""
    fields = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        fields.append((keyword, BaseTag(tag), dictionary_VR(tag)))  # Tag() passes it as is
    return tuple(fields)


def read_values(
    command: Dataset, fields: tuple[tuple[str, int, str], ...]
) -> dict[str, object] | None:
    """Only these elements of a command set (absent ones None), or None if one does not decode.

    The fast read of the C-STORE-RSP path: ``command_values`` reads (and names) every
    element, which costs more than the rest of the capture. A command set is implicit
    VR little endian (PS3.7 6.3.1): a single US or UI value is read off its bytes as
    pydicom would read it; anything else is left to pydicom.
    """
    values: dict[str, object] = {}
    try:
        for keyword, tag, vr in fields:
            element = command.get_item(tag)
            if element is None:
                values[keyword] = None
            elif isinstance(element, RawDataElement):
                value = _plain_value(element.value, vr)
                values[keyword] = value if value is not None else command[tag].value
            else:
                values[keyword] = element.value
    except Exception:
        return None
    return values


def _plain_value(raw: object, vr: str) -> int | str | None:
    """A US or UI value from its implicit VR little endian bytes; None where pydicom must."""
    if not isinstance(raw, bytes):
        return None
    if vr == "US" and len(raw) == 2:
        return int.from_bytes(raw, "little")
    if vr == "UI" and raw and b"\\" not in raw:  # pydicom's convert_UI, then UID()
        return raw.decode("latin-1").rstrip(" \0").strip() or None
    return None


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
