"""PDUs read off a socket within a deadline and a length limit, and A-ABORTs (PS3.8 9.3).

Every PDU starts with its type and the length of the rest (PS3.8 9.3.1): both are
checked before anything more is read, and the rest is read as it arrives, never
allocated ahead from the announced length, by one deadline for the whole PDU.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator

from pynetdicom import pdu as pdus

ASSOCIATION_PDU_LIMIT = 1024**2
"""Bytes of any PDU but a P-DATA-TF: an A-ASSOCIATE-RQ of 128 contexts x 30 syntaxes is ~100 KB."""
A_ASSOCIATE_RQ, P_DATA_TF, A_ABORT = 0x01, 0x04, 0x07
PDU_TYPES = range(0x01, 0x08)  # PS3.8 Table 9-11: A-ASSOCIATE-RQ .. A-ABORT
CHUNK = 65536

# A-ABORT reasons when the service provider aborts (PS3.8 9.3.8, Table 9-26)
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x01, 0x02, 0x06


class _Tracebacks(logging.Filter):
    """Drops pynetdicom's tracebacks on the threads decoding a peer's bytes (``quietly``)."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and getattr(self.quiet, "on", False))


_TRACEBACKS = _Tracebacks()
for _name in ("pynetdicom.utils", "pynetdicom.pdu", "pynetdicom.pdu_items", "pynetdicom.dimse"):
    logging.getLogger(_name).addFilter(_TRACEBACKS)


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Decode a peer's bytes without pynetdicom's tracebacks: the node logs one line instead.

    pynetdicom logs a traceback for each AE title that is not ASCII, and for a DIMSE
    message it cannot convert, on top of the error it raises or reports.
    """
    _TRACEBACKS.quiet.on = True
    try:
        yield
    finally:
        _TRACEBACKS.quiet.on = False


class PeerClosed(Exception):
    """The peer closed the connection; ``detail`` says why that matters, if it does."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail)
        self.detail = detail


class Refused(Exception):
    """A PDU the node will not read: the A-ABORT ``reason`` (PS3.8 Table 9-26) and why."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


def read_pdu(sock: socket.socket, deadline: float, max_pdu: int) -> bytes:
    """One whole PDU by ``deadline`` (``time.monotonic()``); raises TimeoutError after it.

    A P-DATA-TF may be ``max_pdu`` long (the node's Maximum Length Received, PS3.8
    D.1), any other PDU ``ASSOCIATION_PDU_LIMIT``; a longer one, or an unknown type,
    is ``Refused`` with its body unread.
    """
    header = _read(sock, 6, deadline, midway=False)
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in PDU_TYPES:
        raise Refused(f"unknown PDU type 0x{pdu_type:02X}", UNRECOGNIZED_PDU)
    limit = max_pdu if pdu_type == P_DATA_TF else ASSOCIATION_PDU_LIMIT
    if length > limit:
        raise Refused(
            f"PDU type 0x{pdu_type:02X} of {length} bytes, over {limit} (left unread)",
            INVALID_PARAMETER,
        )
    return bytes(header + _read(sock, length, deadline, midway=True))


def _read(sock: socket.socket, count: int, deadline: float, *, midway: bool) -> bytearray:
    """``count`` bytes by ``deadline``, as they come; ``midway``: a PDU is already begun."""
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(data)} of {count} bytes")
        sock.settimeout(remaining)
        chunk = sock.recv(min(count - len(data), CHUNK))
        if not chunk:
            begun = midway or bool(data)
            raise PeerClosed(
                f"peer closed mid-PDU ({len(data)} of {count} bytes)" if begun else None
            )
        data += chunk
    return data


def abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (source 2) with ``reason`` (PS3.8 9.3.8)."""
    return struct.pack(">BBLBBBB", A_ABORT, 0, 4, 0, 0, 2, reason)


def send_abort(sock: socket.socket, reason: int) -> None:
    """Send an A-ABORT if the peer takes it within a second; the socket is closed next anyway."""
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(abort_pdu(reason))


def associate_request(
    sock: socket.socket, deadline: float, max_pdu: int
) -> tuple[bytes, str | None]:
    """The A-ASSOCIATE-RQ (PS3.8 9.3.2) read by ``deadline``, or b"" and why not (None: quietly).

    Anything else the peer sends first is answered with an A-ABORT, as in Sta2 (PS3.8
    Table 9-10), but for an A-ABORT, which just ends the connection (AA-2).
    """
    try:
        raw = read_pdu(sock, deadline, max_pdu)
        if raw[0] == A_ABORT:
            return b"", None
        if raw[0] != A_ASSOCIATE_RQ:
            raise Refused(f"PDU type 0x{raw[0]:02X} before any A-ASSOCIATE-RQ", UNEXPECTED_PDU)
        request = pdus.A_ASSOCIATE_RQ()
        with quietly():
            request.decode(raw)  # as pynetdicom's DUL will, and its AE-6 after it
            request.to_primitive()
    except PeerClosed as closed:
        return b"", closed.detail
    except TimeoutError:
        return b"", "no A-ASSOCIATE-RQ within acse_timeout"
    except Refused as refused:
        send_abort(sock, refused.reason)
        return b"", f"{refused} (A-ABORT)"
    except OSError as exc:
        return b"", f"connection lost: {exc}"
    except Exception as exc:  # pynetdicom's decoding: any error is a bad A-ASSOCIATE-RQ
        send_abort(sock, INVALID_PARAMETER)
        return b"", f"undecodable A-ASSOCIATE-RQ: {type(exc).__name__} (A-ABORT)"
    return raw, None
