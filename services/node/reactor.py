"""A race-free pause for pynetdicom's association reactor.

Before each ``send_c_*()``, pynetdicom 3.0 pauses the association's reactor
thread with ``_reactor_checkpoint.clear()`` and then spins until
``_is_paused`` is true. The reactor sets ``_is_paused = True``, calls
``_reactor_checkpoint.wait()``, and sets it false again only after ``wait()``
returned. A sender that clears the checkpoint inside that window sees a
stale ``True``, sends its request, and the reactor's next
``dimse.get_msg(block=False)`` takes the response away ("Received unexpected
C-STORE service message"). The sender then waits for the DIMSE timeout and
aborts the association, failing the rest of a C-MOVE (pydicom/pynetdicom
#435, #875). It happens under CPU load, more often the faster the peer
answers.

``ReactorCheckpoint`` replaces that ``threading.Event`` with a handshake:
``clear()`` returns only once the reactor thread has parked (or when the caller
is the reactor thread itself, as in a C-GET handler that sends on its own
association, or when the reactor has ended). The reactor parks in ``wait()``,
and also as soon as an iteration's work is done: its last step is the network
idle check, and all it does after that is sleep 1 ms and come to ``wait()``.
Waiting for ``wait()`` itself, as pynetdicom's own spin on ``_is_paused`` does,
costs a sender half a millisecond per request on average (a sixth of a C-STORE
to a fast peer), so a pause that finds the reactor parked marks the association
paused at once.

``wake_on_data`` fixes the other half of the polling: pynetdicom's DUL thread
sleeps 1 ms whenever an iteration found nothing to do, including right after it
sent a request, so a C-STORE-RSP that came back in 0.1 ms waited in the socket
for the rest of that millisecond. The node's DUL threads sleep on their socket
instead (``poll`` with the same timeout): they wake when the peer sends.

Installing both reaches into pynetdicom's association and DUL: that is done by
``dimsebus.services.node.pynetdicom_internals``, which says what each step relies on.
"""

from __future__ import annotations

import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from dimsebus.services.node import pynetdicom_internals as internals


class ReactorCheckpoint:
    """A drop-in for the association's checkpoint ``threading.Event``, with a handshake."""

    def __init__(self, on_pause: Callable[[], None] = lambda: None) -> None:
        self._condition = threading.Condition()
        self._open = True
        self._running: threading.Thread | None = None  # the reactor, busy in an iteration
        self._on_pause = on_pause

    def is_set(self) -> bool:
        """Whether the reactor may run."""
        return self._open

    def set(self) -> None:
        """Let the reactor run again."""
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def clear(self) -> None:
        """Pause the reactor; return once it is blocked in ``wait()``."""
        with self._condition:
            self._open = False
            while (
                self._running is not None
                and self._running is not threading.current_thread()
                and self._running.is_alive()
            ):
                self._condition.wait(0.05)
            if self._running is None:
                self._on_pause()

    def parked(self) -> None:
        """The reactor's iteration is done: it does nothing more before its next ``wait()``."""
        with self._condition:
            if self._running is threading.current_thread():
                self._running = None
                self._condition.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's checkpoint: block while paused, then run one iteration."""
        with self._condition:
            self._running = None
            self._condition.notify_all()
            opened = self._condition.wait_for(lambda: self._open, timeout)
            if opened:
                self._running = threading.current_thread()
            return opened


def install_checkpoint(event: evt.Event) -> None:
    """EVT_CONN_OPEN: give the association the race-free checkpoint before its reactor runs."""
    assoc = event.assoc
    if not internals.has_stock_checkpoint(assoc):
        return
    checkpoint = ReactorCheckpoint(on_pause=lambda: internals.mark_reactor_paused(assoc))
    internals.replace_reactor_checkpoint(assoc, checkpoint)
    internals.after_each_reactor_iteration(assoc, checkpoint.parked)


_POLLERS: weakref.WeakKeyDictionary[threading.Thread, Any] = weakref.WeakKeyDictionary()
"""The DUL threads that sleep on their socket, and the poll object of that socket."""


def wake_on_data(event: evt.Event) -> None:
    """EVT_CONN_OPEN: the association's DUL thread wakes from its idle sleep when data comes."""
    sock = internals.transport_socket(event.assoc)
    if sock is None:
        return
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    _POLLERS[internals.dul_thread(event.assoc)] = poller
    internals.replace_dul_time(_DulClock())


def sleep_on_socket_no_more(event: evt.Event) -> None:
    """EVT_CONN_CLOSE: the socket is gone (its descriptor may be reused): sleep plainly."""
    _POLLERS.pop(internals.dul_thread(event.assoc), None)


class _DulClock:
    """``time`` as pynetdicom's DUL module sees it, with ``sleep`` waking on socket data.

    Only the DUL threads of the node's associations (``wake_on_data``) sleep on their
    socket; any other caller, or a socket already closed, gets ``time.sleep``.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        poller = _POLLERS.get(threading.current_thread())
        if poller is None:
            time.sleep(seconds)
            return
        ready = poller.poll(seconds * 1000)
        if ready and not ready[0][1] & select.POLLIN:  # closed or invalid: no busy loop
            time.sleep(seconds)
