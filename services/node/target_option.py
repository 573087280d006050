"""The ``--to AE@HOST:PORT`` of ``dimsebus send``, checked whole before anything is sent.

Also why a peer did not answer: pynetdicom logs it; here it is kept for the one
error line instead (``--debug`` logs it as before).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator

from dimsebus.schemas.dicom import check_ae_title
from dimsebus.services.console import fail
from dimsebus.services.errors import DimsebusError
from dimsebus.services.logs import debugging
from dimsebus.services.node.sender import Target


def parse_target(text: str, tls: bool) -> Target:
    """``--to AE@HOST:PORT`` checked whole before anything is sent, or one line and an exit.

    A bad AE title or port is exit 2; a host that does not resolve is exit 1. An IPv6
    address is written in brackets, ``STORESCP@[::1]:11112``.
    """
    _, colon, port = text.partition("@")[2].rpartition(":")
    if colon and port and not (port.isascii() and port.isdigit()):
        fail(f"--to: port {port!r} of {text!r} is not a number from 1 to 65535")
    try:
        target = Target.parse(text, tls)
        check_ae_title(target.ae_title)
    except (DimsebusError, ValueError) as exc:
        fail(str(exc) if isinstance(exc, DimsebusError) else f"--to: {exc}")
    host = _unbracketed(target.host, text)
    try:
        socket.getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        fail(f"--to: host {host!r} does not resolve: {getattr(exc, 'strerror', exc)}", code=1)
    return Target(target.ae_title, host, target.port, target.tls)


def bracketed(host: str) -> str:
    """A host as ``--to`` writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _unbracketed(host: str, text: str) -> str:
    """``[::1]`` as ``::1``; brackets around anything but an IPv6 address are an error."""
    if not (host.startswith("[") or host.endswith("]")):
        return host
    inside = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        fail(f"--to: {host!r} of {text!r} is not an IPv6 address in brackets, e.g. [::1]")
    return inside


class LastError(logging.Handler):
    """The last error pynetdicom logged: why a peer did not answer, for the one error line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


@contextlib.contextmanager
def peer_trouble() -> Iterator[LastError]:
    """pynetdicom's errors kept for the error line instead of logged (unless debugging)."""
    trouble, log = LastError(), logging.getLogger("pynetdicom")
    if debugging():
        yield trouble
        return
    log.addHandler(trouble)
    log.propagate = False
    try:
        yield trouble
    finally:
        log.removeHandler(trouble)
        log.propagate = True
