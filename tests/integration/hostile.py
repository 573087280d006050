"""A hostile peer's tools: raw PDUs (PS3.8 9.3), attacker sockets, and the facts tests wait on."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, dimse_messages
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
GOOD, ATTACKER = "127.0.0.1", "127.0.0.2"


def _item(item_type: int, value: bytes, long: bool = False) -> bytes:
    """A PDU item: type, reserved, length (2 bytes in items, 4 in PDUs), value."""
    return struct.pack(">BBL" if long else ">BBH", item_type, 0, len(value)) + value


def associate_rq(
    called: str = "DIMSEBUS",
    calling: str = "HOSTILE",
    contexts: tuple[str, ...] = (VERIFICATION,),
    max_pdu: int = 16384,
) -> bytes:
    """A valid A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), one context per abstract syntax."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for index, abstract in enumerate(contexts):
        syntaxes = _item(0x30, abstract.encode()) + _item(0x40, ImplicitVRLittleEndian.encode())
        items += _item(0x20, bytes([2 * index + 1, 0, 0, 0]) + syntaxes)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.7")
    items += _item(0x50, user)
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    return _item(0x01, fixed + bytes(32) + items, long=True)


def release_rq() -> bytes:
    """An A-RELEASE-RQ PDU (PS3.8 9.3.6)."""
    return _item(0x05, bytes(4), long=True)


def _p_data_tfs(message: dimse_messages.DIMSEMessage, context_id: int) -> bytes:
    """A DIMSE message as P-DATA-TF PDUs (PS3.8 9.3.5) of up to 16 KiB."""
    pdus = b""
    for primitive in message.encode_msg(context_id, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdus += pdu.encode()
    return pdus


def echo_rq(context_id: int = 1, message_id: int = 1) -> bytes:
    """A C-ECHO-RQ in P-DATA-TF PDUs."""
    primitive = C_ECHO()
    primitive.MessageID, primitive.AffectedSOPClassUID = message_id, VERIFICATION
    message = dimse_messages.C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _p_data_tfs(message, context_id)


def store_rq(sop_instance_uid: str, study_uid: str, context_id: int = 3) -> bytes:
    """A C-STORE-RQ whose data set carries the given (perhaps hostile) UIDs."""
    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = CT_IMAGE, sop_instance_uid
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, study_uid + ".1"
    dataset.PatientID = "FUZZ"
    primitive = C_STORE()
    primitive.MessageID, primitive.AffectedSOPClassUID = 1, CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.3.4"
    encoded = encode(dataset, True, True)
    assert encoded is not None
    primitive.DataSet = BytesIO(encoded)
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _p_data_tfs(message, context_id)


def connect(port: int, source: str = ATTACKER, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the node on loopback, from ``source`` (all of 127/8 is loopback)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((GOOD, port))
    return sock


def closed(sock: socket.socket, within: float) -> bool:
    """Whether the node closes ``sock`` within ``within`` s; what it sends is read and dropped."""
    deadline = time.monotonic() + within
    while True:
        remaining = max(deadline - time.monotonic(), 0.0)
        if not select.select([sock], [], [], remaining)[0]:
            if remaining == 0:
                return False
            continue
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True


def until(fact: Callable[[], bool], within: float) -> bool:
    """Whether ``fact`` holds within ``within`` s (checked every 10 ms)."""
    deadline = time.monotonic() + within
    while not fact():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def received(sock: socket.socket, within: float) -> bytes:
    """Everything the node sends on ``sock`` until it closes it (or ``within`` s pass)."""
    data, deadline = b"", time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def echo(
    port: int,
    source: str = GOOD,
    called: str = "DIMSEBUS",
    tls: ssl.SSLContext | None = None,
) -> float:
    """A well-behaved peer's C-ECHO from ``source``: the seconds it took; fails if refused."""
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    started = time.monotonic()
    assoc = ae.associate(
        GOOD,
        port,
        ae_title=called,
        bind_address=(source, 0),
        tls_args=(tls, "localhost") if tls is not None else None,
    )
    try:
        assert assoc.is_established, f"association from {source} not established"
        status = assoc.send_c_echo()
        assert status is not None, "no C-ECHO-RSP"
        assert status.Status == 0, f"C-ECHO status {status.Status:#06x}"
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return time.monotonic() - started


def echo_within(port: int, source: str, within: float) -> float:
    """Seconds until a C-ECHO from ``source`` succeeds, retried until ``within`` s passed."""
    started = time.monotonic()
    while True:
        try:
            echo(port, source)
        except AssertionError:
            if time.monotonic() - started > within:
                raise
            continue
        return time.monotonic() - started


def rss_mb() -> float:
    """This process's resident set size in MB (the in-process node's included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def peak_rss() -> Iterator[list[float]]:
    """The highest RSS seen while the block runs, sampled every 20 ms: ``peak[0]``."""
    peak, done = [rss_mb()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], rss_mb())
