"""Telling an outbox's relay that rows arrived: one datagram per commit, best effort.

The relay is a process of its own that reads the node's SQLite file, so it cannot see
a commit happen. After each commit, the outbox sends a one-byte datagram to a Unix
socket its relay listens on (``ArrivalBell.ring``); the relay wakes up and publishes
at once instead of on its next look (``ArrivalListener``).

The socket's address is in Linux's abstract namespace, named after the outbox file's
real path: every ``Outbox`` of that file rings its relay with no wiring between the
two processes, and nothing is left on disk. A local process could ring it too, or
hold the name first; either costs latency only (the relay then polls).

The DIMSE thread must never wait here (DESIGN.md rule 4). The datagram is sent with
``MSG_DONTWAIT`` through ``ctypes.PyDLL``, which keeps the GIL: ``socket.sendto``
lets go of it, and on a busy process getting it back made each ring cost about twice
as much (11 us against 5 us beside one busy thread). No relay listening
(``ECONNREFUSED``) or ten wake-ups already unread (``EAGAIN``: the relay is awake
anyway) costs the writer one failed system call. A lost wake-up never loses a row:
the row is in the file, and the relay looks at the file every few seconds anyway.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import os
import socket
import struct
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = b"\0dimsebus-outbox-"


def arrival_address(outbox_path: Path) -> bytes | None:
    """The abstract socket address of the relay of ``outbox_path``; None off Linux."""
    if sys.platform != "linux":
        return None
    real = os.path.realpath(outbox_path).encode()
    return _PREFIX + hashlib.sha256(real).hexdigest()[:32].encode()


class ArrivalBell:
    """The writer's side: ``ring`` after a commit; never blocks, never raises."""

    def __init__(self, outbox_path: Path) -> None:
        address = arrival_address(outbox_path)
        self._socket: socket.socket | None = None
        if address is None:
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._address = struct.pack("=H", socket.AF_UNIX) + address  # a sockaddr_un
        self._fd = self._socket.fileno()

    def ring(self) -> None:
        """Tell the relay that a row was committed (if it listens and is not awake)."""
        if self._socket is not None and _SENDTO is not None:  # a failure is ignored (above)
            _SENDTO(self._fd, b"\1", 1, socket.MSG_DONTWAIT, self._address, len(self._address))

    def close(self) -> None:
        """Close the socket; later rings do nothing."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class ArrivalListener:
    """The relay's side: whether rows arrived, and waiting until they do.

    The socket is registered with the event loop only while the relay waits: rings that
    come while it publishes or gathers a batch stay unread until it asks (``arrived``),
    so they cost the relay no wake-up each (a wake-up, a context switch here, costs
    more than the two ``epoll_ctl`` calls of registering).
    """

    def __init__(self, outbox_path: Path) -> None:
        """Listen for ``outbox_path``'s rings; without a socket (taken, not Linux), poll."""
        self._socket: socket.socket | None = None
        address = arrival_address(outbox_path)
        if address is None:
            return
        listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listening.setblocking(False)
        try:
            listening.bind(address)
        except OSError as exc:
            listening.close()
            log.warning("no wake-ups for outbox %s (%s): it is polled instead", outbox_path, exc)
            return
        self._socket = listening

    @property
    def listening(self) -> bool:
        """Whether rings reach this listener (else only polling finds new rows)."""
        return self._socket is not None

    def arrived(self) -> bool:
        """Whether a ring came since the last call; reads them all, so the next starts anew."""
        if self._socket is None:
            return False
        came = False
        while True:
            try:
                self._socket.recv(64)
            except OSError:  # BlockingIOError: none left
                return came
            came = True

    async def wait(self, seconds: float, stopping: asyncio.Future[bool]) -> None:
        """Until a ring comes, ``stopping`` is done, or ``seconds`` have passed."""
        if self.arrived():
            return
        waits: set[asyncio.Future[bool]] = {stopping}
        loop = asyncio.get_running_loop()
        if self._socket is not None:
            rung: asyncio.Future[bool] = loop.create_future()
            loop.add_reader(self._socket, _settle, rung)
            waits.add(rung)
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._socket is not None:
                loop.remove_reader(self._socket)
                rung.cancel()

    def close(self) -> None:
        """Stop listening; the address is free for the next relay."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _settle(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(True)


def _libc_sendto() -> ctypes._NamedFuncPointer | None:
    """libc's ``sendto``, called holding the GIL (``PyDLL``); -1 and errno on failure."""
    if sys.platform != "linux":
        return None
    function = ctypes.PyDLL(None, use_errno=True).sendto
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
    ]
    function.restype = ctypes.c_ssize_t
    return function


_SENDTO = _libc_sendto()
