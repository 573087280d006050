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
``clear()`` returns only once the reactor thread is blocked in ``wait()`` (or
when the caller is the reactor thread itself, as in a C-GET handler that sends
on its own association, or when the reactor has ended).
"""

from __future__ import annotations

import threading

from pynetdicom import evt


class ReactorCheckpoint:
    """A drop-in for the association's checkpoint ``threading.Event``, with a handshake."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._open = True
        self._running: threading.Thread | None = None  # the reactor, between two wait() calls

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
    if isinstance(getattr(assoc, "_reactor_checkpoint", None), threading.Event):
        assoc._reactor_checkpoint = ReactorCheckpoint()  # type: ignore[assignment]
