"""Every reach into pynetdicom's internals: one named function per patch or private read.

pynetdicom has no hook for what the node needs at these points (a race-free pause of
the reactor, a DUL that wakes on data, the C-MOVE requestor's AE title, refusing a
request before it is served), so the node replaces or wraps pieces of a live
association. Each function below says what it relies on in the version it was
written for (``WRITTEN_FOR``); ``tests/unit/test_library_canaries.py`` checks each
of those assumptions against the installed pynetdicom and fails, naming the
function, when a release changes one. ``docs/upstream.md`` proposes the fixes that
belong in pynetdicom itself. No other module touches a private attribute of
pynetdicom: they call these.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pynetdicom
import pynetdicom.dul
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

WRITTEN_FOR = "3.0.4"
"""The pynetdicom release these patches were written and checked against (pyproject pins it)."""


def check_version(found: str) -> None:
    """Refuse a pynetdicom of another minor line; warn about another patch release."""
    if found == WRITTEN_FOR:
        return
    what = (
        f"{__name__} patches internals of pynetdicom {WRITTEN_FOR}, found {found}: run "
        "tests/unit/test_library_canaries.py, then update WRITTEN_FOR and the pin in pyproject.toml"
    )
    if found.split(".")[:2] != WRITTEN_FOR.split(".")[:2]:
        raise ImportError(what)
    warnings.warn(what, RuntimeWarning, stacklevel=2)


check_version(pynetdicom.__version__)

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Given pynetdicom's own callable, the one to call instead (which may call it)."""

INVALID_PDU = "Evt19"  # PS3.8 Table 9-10: the state machine sends an A-ABORT (AA-1, AA-8)
TRANSPORT_CLOSED = "Evt17"  # PS3.8 Table 9-10: the connection is gone (AA-4, AA-5)


# -- logging ------------------------------------------------------------------------------


def quiet_standard_event_logging() -> None:
    """No standard DIMSE and PDU logging handlers on associations created from now on.

    pynetdicom's documented setting (``_config.LOG_HANDLER_LEVEL``): its standard
    handlers run before the node's, and one that raises stops the rest (a C-STORE-RSP
    without Status makes ``standard_dimse_recv_handler`` raise, and the capture would
    never see the response). They also log two lines per C-STORE; the capture's
    events say more. Process-wide, read when an AE's server or association is made.
    """
    _config.LOG_HANDLER_LEVEL = "none"


# -- the association reactor: a race-free pause (dimsebus.services.node.reactor) -------------------


def has_stock_checkpoint(assoc: Association) -> bool:
    """Whether ``assoc`` still pauses its reactor with pynetdicom's ``threading.Event``."""
    return isinstance(getattr(assoc, "_reactor_checkpoint", None), threading.Event)


def replace_reactor_checkpoint(assoc: Association, checkpoint: Any) -> None:
    """Make ``assoc``'s reactor and ``send_*()`` pause on ``checkpoint``.

    Relies on: the reactor blocks in ``self._reactor_checkpoint.wait()`` each
    iteration, and every ``send_*()`` calls ``clear()`` then spins on ``_is_paused``.
    ``checkpoint`` has ``set``, ``clear``, ``is_set`` and ``wait`` as the Event has.
    """
    assoc._reactor_checkpoint = checkpoint


def mark_reactor_paused(assoc: Association) -> None:
    """End a ``send_*()``'s spin on ``_is_paused``: the reactor is known to be parked."""
    assoc._is_paused = True


def after_each_reactor_iteration(assoc: Association, parked: Callable[[], None]) -> None:
    """Call ``parked`` once an iteration of ``assoc``'s reactor has done its work.

    Relies on: the network idle check (``dul.idle_timer_expired()``) is the last step
    of ``Association._run_reactor``'s loop; when it is false the reactor only sleeps
    1 ms and comes back to its checkpoint.
    """
    idle_timer_expired = assoc.dul.idle_timer_expired

    def last_step_of_iteration() -> bool:
        expired = idle_timer_expired()
        if not expired:
            parked()
        return expired

    assoc.dul.idle_timer_expired = last_step_of_iteration  # type: ignore[method-assign]


# -- the DUL thread's idle sleep ------------------------------------------------------------


def dul_thread(assoc: Association) -> threading.Thread:
    """The thread that runs ``assoc``'s DUL reactor (the DUL provider is that thread)."""
    return assoc.dul


def transport_socket(assoc: Association) -> socket.socket | None:
    """The socket under ``assoc``, or None before it has one or once it is closed."""
    transport = assoc.dul.socket
    return transport.socket if transport is not None else None


def replace_dul_time(clock: Any) -> None:
    """Make ``clock`` the ``time`` that pynetdicom's DUL module sleeps with (process-wide).

    Relies on: ``DULServiceProvider.run_reactor`` sleeps ``time.sleep(_run_loop_delay)``
    after an iteration that found nothing to do, with ``time`` the module's global.
    ``clock`` must do all that ``time`` does for every other caller in that module.
    Idempotent for clocks of one class; ``restore_dul_time`` undoes it.
    """
    module = vars(pynetdicom.dul)
    if type(module["time"]) is not type(clock):
        module["time"] = clock


def restore_dul_time() -> None:
    """Give pynetdicom's DUL module back the standard ``time``."""
    import time

    vars(pynetdicom.dul)["time"] = time


def dul_clock() -> Any:
    """What pynetdicom's DUL module sleeps with now."""
    return vars(pynetdicom.dul)["time"]


# -- aborts -------------------------------------------------------------------------------


def sent_abort(assoc: Association) -> bool:
    """Whether the node itself sent an A-ABORT on ``assoc`` (pynetdicom's ``_sent_abort``)."""
    return bool(assoc._sent_abort)


def abort_as_invalid(assoc: Association) -> None:
    """Evt19: the DUL's state machine sends an A-ABORT, as pynetdicom does on a bad message."""
    assoc.dul.event_queue.put(INVALID_PDU)


# -- DIMSE: what the node sees and answers before pynetdicom does ----------------------------


def wrap_get_msg(assoc: Association, wrap: Wrapper) -> None:
    """Route ``assoc``'s ``dimse.get_msg(block)`` through ``wrap(get_msg)``.

    Relies on: the requestor's ``send_*()`` wait for their response with
    ``self.dimse.get_msg(block=True)`` (on the sending thread), and the acceptor's
    reactor takes requests with ``self.dimse.get_msg(block=False)``.
    """
    assoc.dimse.get_msg = wrap(assoc.dimse.get_msg)  # type: ignore[method-assign]


def wrap_serve_request(assoc: Association, wrap: Wrapper) -> None:
    """Route each request ``assoc``'s reactor serves through ``wrap(serve)(message, context_id)``.

    Relies on: ``Association._serve_request(msg, context_id)`` is where the reactor hands
    a received request to its service class, before any handler or identifier decode.
    """
    assoc._serve_request = wrap(assoc._serve_request)  # type: ignore[method-assign]


def wrap_receive_primitive(assoc: Association, wrap: Wrapper) -> None:
    """Route each P-DATA the DUL hands to ``assoc``'s DIMSE through ``wrap(receive)``.

    Relies on: the state machine's DT-2 calls ``dul.assoc.dimse.receive_primitive(p)``
    for every P-DATA-TF, on the DUL thread, before the message is assembled.
    """
    assoc.dimse.receive_primitive = wrap(assoc.dimse.receive_primitive)  # type: ignore[method-assign]


def discard_partial_message(assoc: Association) -> None:
    """Forget the DIMSE message ``assoc`` was assembling (one that cannot be decoded)."""
    assoc.dimse.message = None


def accepted_context(assoc: Association, context_id: int) -> PresentationContext | None:
    """The accepted presentation context ``context_id`` of ``assoc``, or None."""
    return assoc._accepted_cx.get(context_id)


def send_response(assoc: Association, response: Any, context_id: int) -> None:
    """Send a DIMSE response primitive on ``assoc`` without a service class."""
    assoc.dimse.send_msg(response, context_id)


def reject_association(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Send an A-ASSOCIATE-RJ from EVT_REQUESTED and end ``assoc``, as pynetdicom's own
    acceptor negotiation does when it rejects (PS3.8 9.3.4)."""
    assoc.acse.send_reject(result, source, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def pass_move_originator(assoc: Association, ae_title: str, message_id: int) -> None:
    """Make every ``send_c_store`` on ``assoc`` carry this Move Originator (PS3.7 9.1.1.1).

    pynetdicom's Move SCP passes its own AE title as Move Originator AE Title
    (``MoveServiceClass._move_scp``: ``originator_aet=self.ae.ae_title``); the
    standard says it is the AE that invoked the C-MOVE. Relies on ``send_c_store``
    taking ``originator_aet`` and ``originator_id``.
    """
    send = assoc.send_c_store

    def send_c_store(dataset: Any, msg_id: int = 1, priority: int = 2, **kwargs: Any) -> Any:
        kwargs["originator_aet"] = ae_title
        kwargs["originator_id"] = message_id
        return send(dataset, msg_id=msg_id, priority=priority, **kwargs)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign, assignment]


WITHOUT_BULK_DATA = "1.2.840.10008.5.1.4.1.2.5.3"
"""Composite Instance Retrieve Without Bulk Data (PS3.4 Z): its Get SCP edits the data set."""


def wrap_retrieve_stores(assoc: Association, wrap: Wrapper) -> None:
    """Route each ``send_c_store`` a Move or Get SCP makes on ``assoc`` through ``wrap``.

    Relies on: ``QueryRetrieveServiceClass._move_scp`` calls
    ``store_assoc.send_c_store(dataset, msg_id=..., originator_aet=..., originator_id=...)``
    and ``_get_scp`` calls ``self.assoc.send_c_store(dataset, msg_id=...)`` with the
    handler's yielded data set itself, which they only check to be a non-empty
    ``Dataset`` first, and read nothing else of but ``SOPInstanceUID`` (for the Failed
    SOP Instance UID List, when the C-STORE failed or raised). ``_get_scp`` deletes the
    bulk data elements of the data set it sends on a ``WITHOUT_BULK_DATA`` context:
    what it is given there must be the whole data set.
    """
    assoc.send_c_store = wrap(assoc.send_c_store)  # type: ignore[method-assign]


# -- C-STORE of a file's own bytes (dimsebus.services.node.sender) --------------------------


def send_paths_as_stored() -> None:
    """Make ``send_c_store(path)`` send the file's data set as its bytes (process-wide).

    pynetdicom's documented switch (``_config.STORE_SEND_CHUNKED_DATASET``), read on
    each call. Relies on: with it set, ``Association.send_c_store`` given a path (not a
    Dataset) reads only the file meta (``dsutils.split_dataset``: the preamble and group
    0002, and the data set's offset), takes Affected SOP Class and Instance UID from
    Media Storage SOP Class/Instance UID, asks ``_get_valid_context(...,
    allow_conversion=False)`` for a context accepted with the file's own transfer
    syntax (ValueError before anything is sent when there is none), and
    ``DIMSEMessage.encode_msg`` reads the data set from that offset in P-DATA
    fragments of the peer's maximum PDU length. A Dataset argument (the Move and Get
    SCPs', the sender's fallback) is encoded as before.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True


def sends_paths_as_stored() -> bool:
    """Whether ``send_c_store(path)`` sends the file's bytes now."""
    return bool(_config.STORE_SEND_CHUNKED_DATASET)


def write_file_requests_on_caller(assoc: Association) -> None:
    """Make ``assoc`` write each C-STORE-RQ sent from a file to its socket itself.

    pynetdicom hands every P-DATA-TF to its DUL thread through a queue and its state
    machine, one PDU per reactor iteration (tens of microseconds each, 32 of them
    for a 0.5 MB image at a peer's 16 KB maximum PDU), after the DUL's idle sleep
    of up to 1 ms noticed the first. A request whose data set is a file's bytes
    (``send_paths_as_stored``) is encoded into the same PDUs by the thread that
    sends it (``p_data_pdus``: the file read once, its fragments views of it, not
    copies) and written with ``sendmsg``, while nothing else is queued for the DUL;
    the DUL thread goes on reading the socket (the peer answers only once it has the
    whole request). The file is read before EVT_DIMSE_SENT: a file that cannot be
    read raises with nothing sent. Any other message, a TLS socket (an SSL object
    may not read and write on two threads at once) or a busy DUL take pynetdicom's
    path.

    Relies on: ``DIMSEServiceProvider.send_msg(primitive, context_id)`` makes the
    message with ``primitive_to_message``, sets its ``context_id``, triggers
    EVT_DIMSE_SENT with it, and queues each P_DATA of ``encode_msg(context_id,
    maximum_pdu_size)`` with ``dul.send_pdu``; the DUL sends each as ``P_DATA_TF(p)``
    (DT-1) in Sta6, and a broken transport is Evt17. EVT_PDU_SENT and EVT_DATA_SENT
    do not fire for these PDUs (the node binds neither).
    """
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send(primitive: Any, context_id: int) -> None:
        sock = transport_socket(assoc)
        if (
            not isinstance(primitive, C_STORE)
            or primitive._dataset_path is None
            or sock is None
            or isinstance(sock, ssl.SSLSocket)
            or not assoc.is_established
            or not assoc.dul.to_provider_queue.empty()
        ):
            send_msg(primitive, context_id)
            return
        message = C_STORE_RQ()
        message.primitive_to_message(primitive)
        message.context_id = context_id
        command = encode(message.command_set, True, True)  # implicit VR little endian
        if command is None:  # pydicom could not encode it: pynetdicom's path says why
            send_msg(primitive, context_id)
            return
        path, start = cast(tuple[Path, int], primitive._dataset_path)
        with open(path, "rb") as file:  # read before EVT_DIMSE_SENT: unreadable, nothing sent
            file.seek(start)
            data_set = file.read()
        pdus = p_data_pdus(context_id, dimse.maximum_pdu_size, command, data_set)
        evt.trigger(assoc, evt.EVT_DIMSE_SENT, {"message": message})
        try:
            send_buffers(sock, pdus)
        except OSError:
            assoc.dul.event_queue.put(TRANSPORT_CLOSED)

    dimse.send_msg = send  # type: ignore[method-assign]


_PDV_HEADER = struct.Struct(">BBIIBB")
"""A P-DATA-TF holding one PDV: PDU type 04H, reserved, PDU length; the item's length,
presentation context ID and message control header (PS3.8 9.3.5, E.2)."""
_COMMAND, _LAST = 0x01, 0x02
_IOV_MAX = 1024


def p_data_pdus(context_id: int, max_pdu: int, command: bytes, data_set: bytes) -> list[Any]:
    """The P-DATA-TF PDUs of a message, as buffers to write one after the other.

    The same PDUs as pynetdicom's ``encode_msg`` and ``P_DATA_TF.encode`` (one PDV each,
    fragments of ``max_pdu - 6`` bytes, or one when the peer set no maximum), made
    without copying the data set: each fragment is a view of it, after its 12-byte header.
    """
    return [
        *_fragments(context_id, max_pdu, command, _COMMAND),
        *_fragments(context_id, max_pdu, data_set, 0),
    ]


def _fragments(context_id: int, max_pdu: int, data: bytes, kind: int) -> list[Any]:
    size = max_pdu - 6 if max_pdu else max(len(data), 1)
    view = memoryview(data)
    starts = range(0, max(len(data), 1), size)
    buffers: list[Any] = []
    for start in starts:
        fragment = view[start : start + size]
        control = kind | (_LAST if start == starts[-1] else 0)
        buffers += (
            _PDV_HEADER.pack(4, 0, len(fragment) + 6, len(fragment) + 2, context_id, control),
            fragment,
        )
    return buffers


def send_buffers(sock: socket.socket, buffers: list[Any]) -> None:
    """Write ``buffers`` in order, as few system calls as the kernel allows (``sendmsg``)."""
    pending = [memoryview(buffer).cast("B") for buffer in buffers]
    first = 0
    while first < len(pending):
        sent = sock.sendmsg(pending[first : first + _IOV_MAX])
        while first < len(pending) and sent >= len(pending[first]):
            sent -= len(pending[first])
            first += 1
        if sent:
            pending[first] = pending[first][sent:]


# -- the edge server's reads (dimsebus.services.node.server) ---------------------------------------


def read_pdus_with(dul: Any, reader: Callable[[], None]) -> None:
    """Make ``reader()`` read the DUL's next PDU off its socket and queue its event.

    Relies on: ``DULServiceProvider._is_transport_event`` calls ``self._read_pdu_data()``
    when the socket is ready; it queues (event, PDU) as ``queue_pdu`` does.
    """
    dul._read_pdu_data = reader


def decode_pdu(dul: Any, raw: bytearray) -> tuple[Any, str]:
    """A PDU's object and its state machine event (Evt3..Evt16), as the DUL decodes it."""
    pdu, event = dul._decode_pdu(raw)
    return pdu, event


def queue_pdu(dul: Any, pdu: Any, event: str) -> None:
    """Hand the DUL a PDU as if it had read it: its event, then the PDU for the event."""
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def queue_event(dul: Any, event: str) -> None:
    """Queue a state machine event (e.g. ``INVALID_PDU``) on the DUL."""
    dul.event_queue.put(event)


def wrap_state_machine(dul: Any, wrap: Wrapper) -> None:
    """Route each event the DUL's state machine acts on through ``wrap(do_action)(event)``."""
    machine = dul.state_machine
    machine.do_action = wrap(machine.do_action)


def drop_queued_primitive(dul: Any) -> None:
    """Take the oldest primitive the node queued for the DUL to send, if any, unsent."""
    with contextlib.suppress(queue.Empty):
        dul.to_provider_queue.get(False)


def register_server(ae: Any, server: Any) -> None:
    """Count ``server`` among ``ae``'s servers, as ``AE.start_server`` does (``shutdown()``
    stops it, and ``AssociationServer.shutdown`` removes it from there)."""
    ae._servers.append(server)


def servers(ae: Any) -> list[Any]:
    """The servers ``ae`` runs."""
    return list(ae._servers)
