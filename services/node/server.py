"""The node's listening edge: bounded connections, and PDU reads a peer cannot hold open.

pynetdicom 3.0's acceptor reads each PDU with a blocking ``recv`` of the length the
peer announced: a truncated A-ASSOCIATE-RQ, or one byte every few seconds, holds the
connection for ever, as the ARTIM timer (PS3.8 9.1.5) is only checked between PDUs;
a length of 0xFFFFFFFF is buffered as it comes; an unknown PDU type leaves the state
machine in Sta13, reading the peer's bytes. And its server builds an association,
with two threads and a copy of every presentation context, for every connection.

``EdgeServer`` counts live connections per address and in all, and closes the excess
at accept, before any thread exists. Each accepted connection gets one thread, which
does the TLS handshake (PS3.15 B.1) and reads the A-ASSOCIATE-RQ (PS3.8 9.3.2), both
by the ARTIM deadline (accept + ``acse_timeout``), before pynetdicom sees it: junk,
silence and half requests cost a thread and a socket, then one warning line.
``PduReader`` then replaces the DUL's ``_read_pdu_data`` (PS3.8 9.3): each later PDU
is read by a deadline (ARTIM until the association is up, ``network_timeout`` per PDU
after) within ``max_pdu``, an invalid one is Evt19 (A-ABORT, PS3.8 Table 9-10) with
its body unread, and nothing is read once the association is gone (Sta13).

What it reaches into pynetdicom's transport, DUL, state machine and DIMSE for goes
through ``dimsebus.services.node.pynetdicom_internals``, whose canaries
(tests/unit/test_library_canaries.py, and ``test_pynetdicom_internals_are_still_there``
in tests/integration/test_edge_limits.py) check what it relies on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from typing import Any

from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dimsebus.services.node import pynetdicom_internals as internals
from dimsebus.services.node.config import NodeSettings
from dimsebus.services.node.framing import (
    ASSOCIATION_PDU_LIMIT,
    PeerClosed,
    Refused,
    associate_request,
    quietly,
    read_pdu,
)
from dimsebus.services.node.limits import Connection, ConnectionTable, Limits

log = logging.getLogger(__name__)

NEGOTIATING = frozenset({"Sta1", "Sta2", "Sta3", "Sta4", "Sta5"})  # PS3.8 Table 9-1
AWAITING_CLOSE = "Sta13"
LOCAL_REQUESTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
INVALID_PDU = internals.INVALID_PDU  # PS3.8 Table 9-10: A-ABORT (AA-1, AA-8) in every state
# How often serve_forever looks for a shutdown request: socketserver's 0.5 s made every stop
# of a node wait about half a second; a wake-up every 50 ms costs nothing measurable.
POLL_INTERVAL = 0.05


class PduReader:
    """``DULServiceProvider._read_pdu_data`` with deadlines and length limits (PS3.8 9.3)."""

    def __init__(
        self, dul: DULServiceProvider, connection: Connection, limits: Limits, side: str = "from"
    ) -> None:
        """``side``: how log lines name the peer, ``from`` it (accepted) or ``to`` it."""
        self._dul, self._connection, self._limits = dul, connection, limits
        self._side = side
        self._aborting = False

    def __call__(self) -> None:
        """Read one PDU and queue its event (Evt3..Evt16), or end the association."""
        transport = self._dul.socket
        if self._aborting or transport is None or transport.socket is None:
            return
        state = self._dul.state_machine.current_state
        if state == AWAITING_CLOSE:  # the association is gone: close, read nothing more
            transport.close()
            return
        if state in NEGOTIATING:
            deadline = self._connection.deadline
        else:
            deadline = time.monotonic() + self._limits.network_timeout
        sock = transport.socket
        try:
            raw = read_pdu(sock, deadline, self._limits.max_pdu)
            with quietly():
                pdu, event = internals.decode_pdu(self._dul, bytearray(raw))
        except PeerClosed as closed:
            self._close(closed.detail)
        except TimeoutError:
            self.abort(self._late(state))
        except Refused as refused:
            self.abort(str(refused))
        except OSError as exc:
            self._close(f"connection lost: {exc}")
        except Exception as exc:  # pynetdicom's decoding: any error is a bad PDU
            self.abort(f"undecodable PDU: {type(exc).__name__}")
        else:
            internals.queue_pdu(self._dul, pdu, event)
        finally:
            with contextlib.suppress(OSError):  # sends time out too, as a requestor's do
                sock.settimeout(self._limits.network_timeout)

    def _close(self, reason: str | None) -> None:
        """The transport is gone: close it, which queues Evt17 once."""
        if reason is not None:
            log.warning("connection %s %s closed: %s", self._side, self._connection.peer, reason)
        assert self._dul.socket is not None
        self._dul.socket.close()

    def abort(self, reason: str) -> None:
        """Evt19: the state machine sends the A-ABORT; nothing more is read meanwhile."""
        log.warning("association %s %s aborted: %s", self._side, self._connection.peer, reason)
        self._aborting = True
        internals.queue_event(self._dul, INVALID_PDU)

    def _late(self, state: str) -> str:
        """Why a deadline passed: ARTIM before the association is up, network_timeout after."""
        if state in NEGOTIATING:
            return f"association not negotiated within acse_timeout {self._limits.acse_timeout} s"
        return f"PDU not complete within network_timeout {self._limits.network_timeout} s"


class EdgeServer(ThreadedAssociationServer):
    """pynetdicom's server, with connection limits at accept and one thread until negotiation."""

    request_queue_size = 128

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        self.limits = limits
        self.table = ConnectionTable(limits)
        handlers = kwargs.pop("evt_handlers", None) or []
        # First: the association reads through PduReader whatever the other handlers do.
        kwargs["evt_handlers"] = [(evt.EVT_CONN_OPEN, self._adopt), *handlers]
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; a TLS socket is wrapped, its handshake left to the connection's thread."""
        assert self.socket is not None
        sock, address = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the connection in, or refuse it (closed unread) if its address or all are full."""
        return self.table.admit(request, client_address) is not None

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on its own thread."""
        connection = self.table[request]
        thread = threading.Thread(
            target=make_target(lambda: self._serve(connection)),
            name=f"EdgeConnection@{connection.peer}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            self.table.release(connection)
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not socketserver's traceback on stderr."""
        log.warning("connection from %s failed at accept", client_address)

    def _serve(self, connection: Connection) -> None:
        """TLS handshake, A-ASSOCIATE-RQ, then pynetdicom's request handler."""
        try:
            if self._handshake(connection) and self._await_request(connection):
                self.finish_request(connection.socket, (connection.host, connection.port))
        except Exception as exc:
            name = type(exc).__name__
            log.warning("connection from %s failed: %s: %s", connection.peer, name, exc)
        finally:
            if not connection.adopted:
                self.shutdown_request(connection.socket)
                self.table.release(connection)

    def _handshake(self, connection: Connection) -> bool:
        """The TLS handshake (PS3.15 B.1) by the ARTIM deadline; False if it failed."""
        sock = connection.socket
        if not isinstance(sock, ssl.SSLSocket):
            return True
        try:
            sock.settimeout(max(connection.deadline - time.monotonic(), 0.001))
            sock.do_handshake()
        except (OSError, ValueError) as exc:
            log.warning("TLS handshake with %s failed: %s", connection.peer, exc)
            return False
        return True

    def _await_request(self, connection: Connection) -> bool:
        """Whether an acceptable A-ASSOCIATE-RQ came by the ARTIM deadline (PS3.8 9.3.2, Sta2)."""
        sock, deadline = connection.socket, connection.deadline
        request, problem = associate_request(sock, deadline, self.limits.max_pdu)
        if problem is not None:
            log.warning("connection from %s closed: %s", connection.peer, problem)
        if not request:
            return False
        connection.request = request
        sock.settimeout(self.limits.network_timeout)  # not what was left of ARTIM: sends use it
        return True

    def _adopt(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN: read through ``PduReader``; release the connection when it ends."""
        assoc: Association = event.assoc
        connection = self.table.get(internals.transport_socket(assoc))
        if connection is None:
            return
        dul, run = assoc.dul, assoc.run
        read_through(assoc, PduReader(dul, connection, self.limits))

        def run_then_release() -> None:
            try:
                hand_over(dul, connection.request)
                run()
            finally:
                self.table.release(connection)

        assoc.run = run_then_release  # type: ignore[method-assign]
        connection.adopted = True


NO_DEADLINE = 24 * 3600.0
"""A deadline for a timeout the association was given as None (none: the node sets them)."""


def bound_reads_of_requested(event: evt.Event) -> None:
    """EVT_CONN_OPEN of an association the node requests (to a C-STORE's destination, to a
    C-MOVE's archive): its PDUs are read through ``PduReader`` as an accepted one's are, by
    a deadline (``acse_timeout`` for the A-ASSOCIATE-AC, ``network_timeout`` a PDU after),
    within the Maximum Length Received the node announced, an invalid one aborted unread.
    A peer the node calls gets no more of its memory or time than one that calls it.
    """
    assoc: Association = event.assoc
    sock = internals.transport_socket(assoc)
    if not assoc.is_requestor or sock is None:
        return
    announced = int(assoc.requestor.maximum_length or 0)  # 0: no limit was announced
    limits = Limits(
        acse_timeout=float(assoc.acse_timeout or NO_DEADLINE),
        network_timeout=float(assoc.network_timeout or NO_DEADLINE),
        max_pdu=announced or ASSOCIATION_PDU_LIMIT,
        max_connections=0,
        max_per_host=0,
    )
    host, port = str(assoc.acceptor.address), int(assoc.acceptor.port or 0)
    connection = Connection(sock, host, port, time.monotonic() + limits.acse_timeout)
    read_through(assoc, PduReader(assoc.dul, connection, limits, side="to"))


def read_through(assoc: Association, reader: PduReader) -> None:
    """``assoc``'s DUL reads each PDU with ``reader``, aborts on an undecodable DIMSE message
    and drops its own requests once the association is gone: accepted and requested alike."""
    internals.read_pdus_with(assoc.dul, reader)
    abort_on_undecodable_messages(assoc, reader)
    drop_requests_once_gone(assoc.dul)


def hand_over(dul: DULServiceProvider, request: bytes) -> None:
    """Give the DUL the A-ASSOCIATE-RQ as if it had read it: Evt6 after its queued Evt5."""
    try:
        with quietly():
            pdu, event = internals.decode_pdu(dul, bytearray(request))  # EVT_DATA_RECV, ..
    except Exception:  # decoded once already: cannot happen, but must not hang the thread
        internals.queue_event(dul, INVALID_PDU)
        return
    internals.queue_pdu(dul, pdu, event)


def abort_on_undecodable_messages(assoc: Association, reader: PduReader) -> None:
    """A P-DATA-TF whose DIMSE message cannot be decoded is Evt19 (A-ABORT), in one line.

    pynetdicom decodes P-DATA into DIMSE messages in the DUL's state machine (DT-2): a
    command set without Command Field raises there, and the DUL thread dies with two
    tracebacks and no A-ABORT.
    """

    def aborting(receive: Any) -> Any:
        def receive_or_abort(primitive: Any) -> None:
            try:
                with quietly():
                    receive(primitive)
            except Exception as exc:
                internals.discard_partial_message(assoc)
                reader.abort(f"undecodable DIMSE message: {exc!r}")

        return receive_or_abort

    internals.wrap_receive_primitive(assoc, aborting)


def drop_requests_once_gone(dul: DULServiceProvider) -> None:
    """The node's own requests (a response, a release) after the association is gone are dropped.

    pynetdicom's state machine raises on a state and event it has no transition for
    (PS3.8 Table 9-10), such as a C-ECHO-RSP (Evt9) sent after the peer was aborted
    (Sta13), and its DUL thread dies with a traceback.
    """
    machine = dul.state_machine

    def dropping(do_action: Any) -> Any:
        def do_or_drop(event: str) -> None:
            state = machine.current_state
            if event in LOCAL_REQUESTS and (event, state) not in fsm.TRANSITION_TABLE:
                internals.drop_queued_primitive(dul)  # the primitive the event stood for
                return
            do_action(event)

        return do_or_drop

    internals.wrap_state_machine(dul, dropping)


def start(
    ae: AE,
    settings: NodeSettings,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None = None,
) -> EdgeServer:
    """Listen on the node's address and serve in the background, as ``start_server`` does."""
    server = ae.make_server(
        (settings.host, settings.port),
        evt_handlers=evt_handlers,
        ssl_context=ssl_context,
        server_class=EdgeServer,
        limits=Limits.of(settings),
    )
    assert isinstance(server, EdgeServer)
    thread = threading.Thread(
        target=make_target(lambda: server.serve_forever(POLL_INTERVAL)),
        name=f"EdgeServer@{settings.port}",
        daemon=True,
    )
    thread.start()
    internals.register_server(ae, server)
    return server
