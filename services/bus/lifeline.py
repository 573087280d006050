"""A child process's lifeline: it stops within a second of its parent's death.

A relay that outlives its node holds the outbox's lock, so the next node's relay
waits for ever. Reading ``os.getppid()`` once the child is running is too late: a
parent killed while the child was still importing (about a second of it) is already
gone, and the pid read is the reaper's. So the parent names itself in
``PARENT_VARIABLE`` before it starts the child, and the child, run as
``python -m dimsebus.services.bus.lifeline ARGS`` (this module imports nothing but the
standard library), holds on to it before it loads anything else:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` has the kernel signal it when the
  parent dies, when the parent's main thread started it (the signal follows the
  thread that forked, which for another thread may end before the process);
- everywhere, a thread polls ``getppid()``; a parent gone is SIGTERM to the child
  itself (a graceful stop once its handlers are in place), then, after a grace
  period, an immediate exit.

Then it runs ``python -m dimsebus.services ARGS``.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
import threading
import time

PARENT_VARIABLE = "DIMSEBUS_PARENT_PID"
"""The pid of the process that started this one, set by it before the fork."""
DEATH_SIGNAL_VARIABLE = "DIMSEBUS_PARENT_DEATH_SIGNAL"
"""``1`` when PR_SET_PDEATHSIG may be asked for: the parent's main thread forked."""
POLL = 0.1
GRACE = 0.5
"""Seconds an orphan may take to stop after its SIGTERM before it exits at once."""
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_held: int | None = None


def child_environment() -> dict[str, str]:
    """The variables to give a child started from this process (and this thread)."""
    main_thread = threading.current_thread() is threading.main_thread()
    return {PARENT_VARIABLE: str(os.getpid()), DEATH_SIGNAL_VARIABLE: str(int(main_thread))}


def hold() -> int:
    """Tie this process to its parent (once); the parent's pid.

    The parent is the one ``PARENT_VARIABLE`` names, else the current one. If it is
    already gone, this process exits now.
    """
    global _held
    if _held is not None:
        return _held
    recorded = os.environ.get(PARENT_VARIABLE, "")
    parent = int(recorded) if recorded.isdigit() else os.getppid()
    if os.environ.get(DEATH_SIGNAL_VARIABLE) == "1" and sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # gone before the signal was asked for
        _orphaned(parent)
    threading.Thread(target=_watch, args=(parent,), name="lifeline", daemon=True).start()
    _held = parent
    return parent


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL)
    os.kill(os.getpid(), signal.SIGTERM)  # stop as on a signal, where a handler is set
    time.sleep(GRACE)
    _orphaned(parent)


def _orphaned(parent: int) -> None:
    sys.stderr.write(f"parent process {parent} is gone; pid {os.getpid()} stops\n")
    sys.stderr.flush()
    os._exit(1)


def main() -> None:
    """``python -m dimsebus.services.bus.lifeline ARGS``: hold on, then run the command.

    The command is ``python -m dimsebus.services ARGS``.
    """
    hold()
    runpy.run_module("dimsebus.services", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
