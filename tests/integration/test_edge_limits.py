"""Bounded resources at the node's edge (issue 17, item 4): hostile sockets from one address.

Each attack comes from 127.0.0.2 while a well-behaved peer echoes from 127.0.0.1: it is
served within 2 s, the attacker's address is served again within acse_timeout of the
attack stopping, and the node (in this process) stays under 300 MB.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from socketserver import BaseServer
from typing import Any

import pytest
from pynetdicom import AE, fsm
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from dimsebus.services.node import server as edge
from dimsebus.services.node.config import NodeSettings, Peer
from dimsebus.services.node.limits import ACCEPT_MARGIN
from dimsebus.services.node.sender import SendError, Target, send_files
from dimsebus.services.node.synthetic import write_study
from tests.integration.conftest import RunningNode
from tests.integration.hostile import (
    ATTACKER,
    VERIFICATION,
    associate_rq,
    closed,
    connect,
    echo,
    echo_rq,
    echo_within,
    peak_rss,
    received,
    release_rq,
    until,
)
from tests.integration.peers import dcmtk, free_port, run_tool

pytestmark = pytest.mark.integration
ACSE = 2.0  # acse_timeout of the nodes under attack
PER_HOST = 16  # max_associations_per_host, the default
A_ABORT = b"\x07\x00\x00\x00\x00\x04"


def edge_of(node: RunningNode) -> edge.EdgeServer:
    """The node's listening server."""
    assert node.node.ae is not None
    (server,) = [s for s in node.node.ae._servers if isinstance(s, edge.EdgeServer)]
    return server


async def attacked(start_node: Any, acse: float = ACSE, **settings: Any) -> RunningNode:
    """A node with a short acse_timeout, to be attacked."""
    return await start_node(instances=1, acse_timeout=acse, **settings)  # type: ignore[no-any-return]


CANARY = {
    DULServiceProvider.__init__: ("self._recv_pdu", "self.event_queue", "self.to_provider_queue"),
    DULServiceProvider._is_transport_event: ("self._read_pdu_data()",),
    DULServiceProvider._decode_pdu: ("EVT_DATA_RECV", "return pdu, event"),
    DULServiceProvider._process_recv_primitive: ("self.to_provider_queue.queue[0]",),
    AssociationSocket.__init__: ('self.event_queue.put("Evt5")',),
    AssociationSocket.close: ('self.event_queue.put("Evt17")',),
    RequestHandler.handle: ("evt.EVT_CONN_OPEN", "assoc.start()"),
    RequestHandler._create_association: ("client_socket=self.request",),
    vars(BaseServer)["_handle_request_noblock"]: ("self.verify_request(", "self.process_request("),
    fsm.DT_2: ("dul.assoc.dimse.receive_primitive(",),
    Association.__init__: (
        "self.dul: DULServiceProvider = ",
        "self.dimse: DIMSEServiceProvider = ",
    ),
    DIMSEServiceProvider.receive_primitive: ("self.message = None",),
    fsm.StateMachine.do_action: ("raise InvalidEventError",),
}


def test_pynetdicom_internals_are_still_there() -> None:
    # the canary: the code services/node/server.py replaces, wraps or relies on in pynetdicom 3.0
    missing = [
        f"{function.__qualname__}: {text}"
        for function, texts in CANARY.items()
        for text in texts
        if text not in inspect.getsource(function)
    ]
    transitions = [("Evt5", "Sta1"), ("Evt6", "Sta2"), ("Evt17", "Sta3"), ("Evt17", "Sta13")]
    transitions += [("Evt19", state) for state in ("Sta2", "Sta3", "Sta5", "Sta6", "Sta7")]
    missing += [f"transition {t}" for t in transitions if t not in fsm.TRANSITION_TABLE]
    assert isinstance(AE()._servers, list)
    assert missing == []


HELD = 8.0  # acse_timeout of a node whose attackers hold their sockets while a peer echoes


async def test_truncated_associate_requests(start_node: Any) -> None:
    node = await attacked(start_node, acse=HELD)
    await asyncio.to_thread(_truncated_requests, node)


def _truncated_requests(node: RunningNode) -> None:
    port, server = node.settings.port, edge_of(node)
    request = associate_rq()
    with peak_rss() as peak:
        # given 70 sockets from one address that each send half an A-ASSOCIATE-RQ
        opened = time.monotonic()
        attackers = [connect(port) for _ in range(70)]
        for sock in attackers:
            _send_quietly(sock, request[: len(request) // 2])
        # then the address holds at most its share, and a peer elsewhere is answered while
        # they all still hold their sockets (acse_timeout has not let one of them go)
        assert server.table.count(ATTACKER) <= PER_HOST
        echo(port)
        held = [s for s in attackers if not closed(s, 0.0)]
        assert len(held) == PER_HOST, "the echo was answered only once attackers were let go"
        # and the node closes every one of them within acse_timeout of its connection
        assert all(closed(s, opened + HELD + 1 - time.monotonic()) for s in attackers)
        # and the attacker's address is served again
        echo_within(port, ATTACKER, ACSE)
    assert peak[0] < 300, f"RSS {peak[0]:.0f} MB"
    _close(attackers)


async def test_one_byte_at_a_time(start_node: Any) -> None:
    node = await attacked(start_node, acse=HELD)
    await asyncio.to_thread(_slow_loris, node.settings.port)


def _slow_loris(port: int) -> None:
    # given 20 sockets from one address, each sending an A-ASSOCIATE-RQ a byte every 0.25 s
    lived: list[float] = []
    attack = threading.Thread(target=_drip, args=(port, 20, 0.25, lived))
    attack.start()
    # then a peer elsewhere is served meanwhile: while the address's share of them still
    # holds its sockets (only those over the share were let go, at accept)
    echo(port)
    assert len(lived) <= 20 - PER_HOST, "the echo was answered only once attackers were let go"
    attack.join()
    # and the node closed each of them within acse_timeout, though they kept sending
    assert max(lived) < HELD + 0.5, lived
    echo_within(port, ATTACKER, ACSE)


def _drip(port: int, count: int, interval: float, lived: list[float]) -> None:
    """Send an A-ASSOCIATE-RQ one byte per ``interval`` on ``count`` sockets until each closes;
    each one's lifetime goes to ``lived`` as it closes."""
    request, opened = associate_rq(), time.monotonic()
    open_ = {connect(port): 0 for _ in range(count)}

    def gone(sock: socket.socket) -> None:
        lived.append(time.monotonic() - opened)
        sock.close()
        del open_[sock]

    while open_:
        for sock in list(open_):
            sent = open_[sock]
            if closed(sock, 0) or not _send_quietly(sock, request[sent : sent + 1]):
                gone(sock)
            else:
                open_[sock] = sent + 1
        # the attack's own pace, not a wait for the node: a socket the node closes
        # meanwhile is noted as it closes, not at the next byte
        pace = time.monotonic() + interval
        while open_ and (left := pace - time.monotonic()) > 0:
            for sock in select.select(list(open_), [], [], left)[0]:
                if closed(sock, 0):
                    gone(sock)


async def test_pdu_of_four_gigabytes(start_node: Any) -> None:
    node = await attacked(start_node)
    await asyncio.to_thread(_huge_pdus, node.settings.port)


def _huge_pdus(port: int) -> None:
    # given a PDU header announcing 0xFFFFFFFF bytes
    started = time.monotonic()
    with connect(port) as sock:
        sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        # then the node answers an A-ABORT at once and closes, having read nothing more
        assert received(sock, ACSE).startswith(A_ABORT)
    assert time.monotonic() - started < 1.0
    # and while a peer streams such a PDU's body, the node buffers none of it
    with peak_rss() as peak:
        streamed: list[int] = []
        attack = threading.Thread(target=lambda: streamed.append(_stream(port, 256)))
        attack.start()
        echo(port)
        attack.join()
    assert streamed[0] < 64, f"{streamed[0]} MiB streamed before the node closed"
    assert peak[0] < 300, f"RSS {peak[0]:.0f} MB"
    echo_within(port, ATTACKER, ACSE)


def _stream(port: int, mebibytes: int) -> int:
    """Send a P-DATA-TF of 0xFFFFFFFF bytes; the MiB sent before the node closed."""
    chunk = bytes(1024**2)
    with connect(port) as sock:
        sock.sendall(b"\x04\x00\xff\xff\xff\xff")
        for sent in range(mebibytes):
            if not _send_quietly(sock, chunk):
                return sent
    return mebibytes


async def test_other_pdus_before_a_request(start_node: Any) -> None:
    node = await attacked(start_node)
    await asyncio.to_thread(_before_a_request, node.settings.port)


def _before_a_request(port: int) -> None:
    # given PDUs that may not come first: an A-RELEASE-RQ, a P-DATA-TF, an unknown type
    for first, reason in ((release_rq(), 0x02), (echo_rq(), 0x02), (b"\x09\x00" + bytes(4), 0x01)):
        started = time.monotonic()
        with connect(port) as sock:
            sock.sendall(first)
            # then each is answered at once with an A-ABORT (PS3.8 Table 9-26 reason) and a close
            assert received(sock, ACSE) == A_ABORT + bytes([0, 0, 2, reason])
        assert time.monotonic() - started < 1.0
    # and a peer's own A-ABORT just ends the connection
    with connect(port) as sock:
        sock.sendall(b"\x07\x00\x00\x00\x00\x04" + bytes(4))
        assert received(sock, ACSE) == b""


async def test_p_data_over_max_pdu_on_an_association(start_node: Any) -> None:
    node = await attacked(start_node)
    await asyncio.to_thread(_p_data_over_max_pdu, node.settings)


def _p_data_over_max_pdu(settings: NodeSettings) -> None:
    # given an association from pynetdicom, as established as any
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    assert assoc.is_established
    # when its peer sends a P-DATA-TF one byte longer than the node's maximum
    transport = assoc.dul.socket
    assert transport is not None
    assert transport.socket is not None
    transport.socket.sendall(b"\x04\x00" + (settings.max_pdu + 1).to_bytes(4, "big"))
    # then the node aborts the association without waiting for the body
    deadline = time.monotonic() + 1.0
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)  # polls the fact: pynetdicom sets it from its own thread
    assert assoc.is_aborted


async def test_random_bytes(start_node: Any, caplog: pytest.LogCaptureFixture) -> None:
    node = await attacked(start_node)
    caplog.set_level(logging.WARNING)
    ports = await asyncio.to_thread(_random_bytes, node.settings.port)
    # then each connection got one warning line at most, and no traceback
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in lines if r.exc_info], "a traceback in the log"
    for port in ports:
        assert sum(f"{ATTACKER}:{port}" in r.getMessage() for r in lines) <= 1


def _random_bytes(port: int) -> list[int]:
    # given 16 sockets from one address that stream random bytes
    attackers = [connect(port) for _ in range(PER_HOST)]
    opened = time.monotonic()
    for sock in attackers:
        _send_quietly(sock, os.urandom(65536))
    # then the node closes each at once, though it keeps sending
    for sock in attackers:
        assert _closed_while_streaming(sock, opened + 1.0)
    # and peers on both addresses are served
    echo(port)
    echo_within(port, ATTACKER, ACSE)
    ports = [s.getsockname()[1] for s in attackers]
    _close(attackers)
    return ports


def _closed_while_streaming(sock: Any, deadline: float) -> bool:
    """Keep sending random bytes until the node closes ``sock`` (or ``deadline`` passes)."""
    while time.monotonic() < deadline:
        if closed(sock, 0) or not _send_quietly(sock, os.urandom(4096)):
            return True
    return False


async def test_idle_sockets(start_node: Any) -> None:
    node = await attacked(start_node, acse=HELD)
    await asyncio.to_thread(_idle_sockets, node)


def _idle_sockets(node: RunningNode) -> None:
    port, server = node.settings.port, edge_of(node)
    threads = threading.active_count()
    # given 200 idle sockets from one address
    attackers = [connect(port) for _ in range(200)]
    # then all but the address's share are closed at accept
    refused: set[Any] = set()

    def refused_at_accept() -> bool:
        refused.update(s for s in attackers if s not in refused and closed(s, 0))
        return len(refused) >= 200 - PER_HOST

    assert until(refused_at_accept, 5.0)
    assert len(refused) == 200 - PER_HOST
    assert server.table.count(ATTACKER) == PER_HOST
    # and the node runs one thread for each of the rest (no association before a request)
    assert threading.active_count() - threads <= PER_HOST + 2
    # and a peer elsewhere is served while they still hold their sockets
    echo(port)
    assert server.table.count(ATTACKER) == PER_HOST, "the echo was answered only once they went"
    # and once the attacker lets go, its address is served again within acse_timeout
    _close(attackers)
    echo_within(port, ATTACKER, ACSE)


async def test_connections_in_all(start_node: Any) -> None:
    node = await attacked(start_node, max_associations=4)
    await asyncio.to_thread(_connections_in_all, node)


def _connections_in_all(node: RunningNode) -> None:
    port, server = node.settings.port, edge_of(node)
    total = 4 + ACCEPT_MARGIN
    # given max_associations + margin idle connections, from several addresses
    held = [connect(port, f"127.0.0.{3 + i % 4}") for i in range(total)]
    assert until(lambda: server.table.count() == total, 1.0)
    # then one more is closed at accept, whichever its address
    with connect(port, "127.0.0.9") as extra:
        assert closed(extra, 1.0)
    assert not any(closed(s, 0) for s in held)
    _close(held)
    echo_within(port, "127.0.0.9", ACSE)


async def test_storescu_at_max_pdu(tmp_path: Path, start_node: Any) -> None:
    # given a node that lets STORESCU store, and an instance of 512 x 512 (P-DATA-TFs of max_pdu)
    node = await attacked(start_node, peers={"STORESCU": Peer(allow=frozenset({"store"}))})
    (path,) = write_study(tmp_path / "big", 1, seed="big", rows=512)
    # when dcmtk's storescu sends it
    output = await run_tool(
        dcmtk("storescu"), "-v", "-aet", "STORESCU", "-aec", node.settings.ae_title,
        "127.0.0.1", str(node.settings.port), str(path),
    )  # fmt: skip
    # then it is stored: legitimate PDUs of the node's maximum length pass
    assert "Received Store Response (Success)" in output, output
    assert node.node.archive.count() == 2


async def test_tls_handshake_off_the_accept_loop(tmp_path: Path) -> None:
    await asyncio.to_thread(_tls_handshakes, tmp_path)


def _tls_handshakes(tmp_path: Path) -> None:
    server_context, client_context = _tls_contexts(tmp_path)
    settings = NodeSettings(host="127.0.0.1", port=free_port(), acse_timeout=HELD)
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(VERIFICATION)
    ae.acse_timeout = settings.acse_timeout
    server = edge.start(ae, settings, [], ssl_context=server_context)
    try:
        # given 10 connections from one address that never start their TLS handshake
        stalled = [connect(settings.port) for _ in range(10)]
        opened = time.monotonic()
        # then a TLS peer elsewhere is served while they all still hold their sockets: no
        # handshake runs on the accept loop (there, each would wait out acse_timeout)
        echo(settings.port, tls=client_context)
        assert not [s for s in stalled if closed(s, 0.0)], "served only once they were let go"
        # and the stalled ones are closed within acse_timeout
        assert all(closed(s, opened + HELD + 1 - time.monotonic()) for s in stalled)
        # and every connection, the echo's too once its thread lets go, is released
        assert until(lambda: server.table.count() == 0, 5.0), server.table.count()
        _close(stalled)
    finally:
        server.shutdown()


def _tls_contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for localhost: the server's context and a client's."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def _send_quietly(sock: Any, data: bytes) -> bool:
    """Send; False once the node has closed the connection."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _close(sockets: list[Any]) -> None:
    for sock in sockets:
        sock.close()


def test_a_peer_the_node_calls_gets_the_same_pdu_limits(tmp_path: Path) -> None:
    # given a destination that answers the node's A-ASSOCIATE-RQ with a PDU announcing
    # 4 GiB, and then keeps the connection open
    listener = socket.create_server(("127.0.0.1", 0))
    after: list[bytes] = []

    def destination() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            header = _exactly(conn, 6)
            _exactly(conn, int.from_bytes(header[2:], "big"))
            conn.sendall(b"\x02\x00\xff\xff\xff\xff")
            after.append(received(conn, 10.0))

    peer = threading.Thread(target=destination)
    peer.start()
    files = write_study(tmp_path / "study", 1, seed="limits")
    settings = NodeSettings(node_id="limits", acse_timeout=30.0)
    target = Target("PEER", "127.0.0.1", listener.getsockname()[1])
    started = time.monotonic()
    # when the node sends it a file
    with pytest.raises(SendError):
        send_files(settings, None, target, files)
    peer.join(15)
    listener.close()
    # then the node aborts at once, the PDU's body unread (not after its 30 s acse_timeout,
    # nor once the peer gave up): an A-ABORT from the service provider
    assert time.monotonic() - started < 5
    assert after
    assert after[0].startswith(A_ABORT + b"\x00\x00\x02")


def _exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        assert chunk, "the node closed the connection"
        data += chunk
    return data
